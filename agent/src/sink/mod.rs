//! Where batches of events go once captured and filtered: JSON lines on
//! stdout (`tyrd observe`) or the disk spool the server stream sends from
//! (`tyrd run`). A sink stamps the per-host sequence numbers, so the numbers
//! are contiguous over exactly what leaves the host.

mod spool;
mod stdout;

pub use spool::{SpoolSink, SpoolSinkCounters};
pub use stdout::{JsonLinesSink, StdoutSink, write_event};

use tyr_proto::Event;

/// Why a sink could not take a batch.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The output is gone for good (stdout closed, a broken pipe): the
    /// capture loop stops, as with nowhere to deliver there is nothing to do.
    #[error("output closed: {0}")]
    Closed(#[source] std::io::Error),
}

/// A destination for batches of events.
///
/// `deliver` runs on the capture loop's writer thread; it may block (the
/// ring reader then waits on the bounded queue, and the kernel counts what
/// it cannot emit). An `Err` means the output is gone and ends the capture
/// loop; a sink that can recover (the spool) retries, and counts what it
/// finally drops, instead of returning an error.
pub trait Sink: Send {
    /// Takes one batch (in capture order, after filtering; `seq` unset).
    fn deliver(&mut self, batch: Vec<Event>) -> Result<(), SinkError>;
}

impl<S: Sink + ?Sized> Sink for Box<S> {
    fn deliver(&mut self, batch: Vec<Event>) -> Result<(), SinkError> {
        (**self).deliver(batch)
    }
}

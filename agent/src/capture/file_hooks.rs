//! Loading the file hooks: BPF LSM (opens, execs, and the link, rename,
//! symlink, mknod, unlink, truncate, mount, unix socket, ptrace and
//! user-namespace hooks that hold governed agents to their file rules),
//! else the open syscall tracepoints.

use super::*;

/// Loads the LSM object. A kernel lacking one of the optional hooks
/// (`userns_create` before 6.1, the path and unix socket hooks without
/// CONFIG_SECURITY_PATH, `path_rename` without its flags before 5.19)
/// refuses the whole object; it is then loaded without them, so file and
/// exec rules still hold, and the first error says why they are missing.
fn load_lsm(shared: &SharedMaps) -> (libbpf_rs::Result<file_lsm::FileLsmSkel<'static>>, Option<String>) {
    let first = match file_lsm::FileLsmSkel::open_shared(shared).and_then(|open| open.load()) {
        Ok(skel) => return (Ok(skel), None),
        Err(error) => error.to_string(),
    };
    let without_optional = file_lsm::FileLsmSkel::open_shared(shared).and_then(|mut open| {
        let progs = &mut open.progs;
        for prog in [
            &mut progs.tyr_path_link,
            &mut progs.tyr_path_rename,
            &mut progs.tyr_sb_mount,
            &mut progs.tyr_move_mount,
            &mut progs.tyr_userns_create,
            &mut progs.tyr_unix_connect,
            &mut progs.tyr_unix_send,
            &mut progs.tyr_ptrace_access,
            &mut progs.tyr_path_symlink,
            &mut progs.tyr_path_mknod,
            &mut progs.tyr_path_unlink,
            &mut progs.tyr_path_truncate,
        ] {
            prog.set_autoload(false);
        }
        open.load()
    });
    (without_optional, Some(first))
}

/// BPF LSM first (file opens and exec checks); the syscall tracepoints
/// when it cannot load or attach.
pub(super) fn load_file_hooks(
    shared: &SharedMaps,
    attacher: &mut Attacher,
) -> (Option<file_lsm::FileLsmSkel<'static>>, Option<file_syscalls::FileSyscallsSkel<'static>>) {
    let (lsm, optional_error) = load_lsm(shared);
    let lsm_error = match lsm {
        Ok(skel) => match skel.progs.tyr_file_open.attach_lsm() {
            Ok(link) => {
                attacher.attach(FILE_OPEN_LSM, Ok(link));
                attacher.attach(EXEC_BEGIN_LSM, skel.progs.tyr_exec_begin.attach_lsm());
                attacher.attach(EXEC_LSM, skel.progs.tyr_exec_check.attach_lsm());
                // How governed processes could otherwise get around file rules.
                let progs = &skel.progs;
                for (hook, prog) in [
                    (LINK_LSM, &progs.tyr_path_link),
                    (RENAME_LSM, &progs.tyr_path_rename),
                    (MOUNT_LSM, &progs.tyr_sb_mount),
                    (MOVE_MOUNT_LSM, &progs.tyr_move_mount),
                    (USERNS_LSM, &progs.tyr_userns_create),
                    (UNIX_CONNECT_LSM, &progs.tyr_unix_connect),
                    (UNIX_SEND_LSM, &progs.tyr_unix_send),
                    (PTRACE_LSM, &progs.tyr_ptrace_access),
                    (SYMLINK_LSM, &progs.tyr_path_symlink),
                    (MKNOD_LSM, &progs.tyr_path_mknod),
                    (UNLINK_LSM, &progs.tyr_path_unlink),
                    (TRUNCATE_LSM, &progs.tyr_path_truncate),
                ] {
                    match &optional_error {
                        Some(error) => attacher.record(hook, Some(error.clone()), ""),
                        None => {
                            attacher.attach(hook, prog.attach_lsm());
                        }
                    }
                }
                return (Some(skel), None);
            }
            Err(error) => error.to_string(),
        },
        Err(error) => error.to_string(),
    };
    attacher.record(FILE_OPEN_LSM, Some(lsm_error.clone()), FILE_FALLBACK);
    attacher.record(EXEC_BEGIN_LSM, Some(lsm_error.clone()), "not needed without lsm/bprm_check_security");
    attacher.record(EXEC_LSM, Some(lsm_error.clone()), EXEC_FALLBACK);
    for hook in GOVERNING_LSM {
        attacher.record(hook, Some(lsm_error.clone()), "");
    }

    let skel = match file_syscalls::FileSyscallsSkel::open_shared(shared).and_then(|open| open.load()) {
        Ok(skel) => skel,
        Err(error) => {
            attacher.record(FILE_FALLBACK, Some(error.to_string()), "");
            return (None, None);
        }
    };
    let progs = &skel.progs;
    for (hook, prog) in [
        ("tp/syscalls/sys_enter_openat", &progs.tyr_enter_openat),
        ("tp/syscalls/sys_exit_openat", &progs.tyr_exit_openat),
        ("tp/syscalls/sys_enter_openat2", &progs.tyr_enter_openat2),
        ("tp/syscalls/sys_exit_openat2", &progs.tyr_exit_openat2),
        ("tp/syscalls/sys_enter_open", &progs.tyr_enter_open),
        ("tp/syscalls/sys_exit_open", &progs.tyr_exit_open),
        ("tp/syscalls/sys_enter_creat", &progs.tyr_enter_creat),
        ("tp/syscalls/sys_exit_creat", &progs.tyr_exit_creat),
    ] {
        attacher.attach(hook, prog.attach());
    }
    (None, Some(skel))
}

//! Open flags as text (`O_WRONLY|O_CREAT|O_TRUNC`), decoded with the
//! platform's values: the kernel records the flags of the traced process,
//! which runs on tyrd's architecture, and the values differ between
//! architectures (aarch64 swaps O_DIRECTORY/O_NOFOLLOW with
//! O_DIRECT/O_LARGEFILE's places on x86_64).

/// `O_LARGEFILE` as the kernel sets it: glibc defines it as 0 on 64-bit
/// platforms (large files are the default), but the kernel still marks
/// every 64-bit open with its own arch-specific bit (`force_o_largefile`),
/// which LSM records see in `f_flags`.
const O_LARGEFILE: libc::c_int = if libc::O_LARGEFILE != 0 {
    libc::O_LARGEFILE
} else if cfg!(target_arch = "aarch64") {
    0o400_000 // arch/arm64/include/uapi/asm/fcntl.h
} else {
    0o100_000 // include/uapi/asm-generic/fcntl.h (x86_64 and most others)
};

/// Flags by name, after the access mode. A flag made of several bits
/// (`O_SYNC` includes `O_DSYNC`, `O_TMPFILE` includes `O_DIRECTORY`) is
/// named when all of its bits are set.
const NAMED: [(libc::c_int, &str); 17] = [
    (libc::O_CREAT, "O_CREAT"),
    (libc::O_EXCL, "O_EXCL"),
    (libc::O_NOCTTY, "O_NOCTTY"),
    (libc::O_TRUNC, "O_TRUNC"),
    (libc::O_APPEND, "O_APPEND"),
    (libc::O_NONBLOCK, "O_NONBLOCK"),
    (libc::O_DSYNC, "O_DSYNC"),
    (libc::O_SYNC, "O_SYNC"),
    (libc::O_ASYNC, "O_ASYNC"),
    (libc::O_DIRECT, "O_DIRECT"),
    (O_LARGEFILE, "O_LARGEFILE"),
    (libc::O_DIRECTORY, "O_DIRECTORY"),
    (libc::O_NOFOLLOW, "O_NOFOLLOW"),
    (libc::O_NOATIME, "O_NOATIME"),
    (libc::O_CLOEXEC, "O_CLOEXEC"),
    (libc::O_PATH, "O_PATH"),
    (libc::O_TMPFILE, "O_TMPFILE"),
];

/// `flags` as `O_RDONLY|O_CLOEXEC`: the access mode, then every named flag
/// set, then any bits no name covers (in octal), so nothing is dropped.
pub fn open_flags_text(flags: u32) -> String {
    let access = match flags as libc::c_int & libc::O_ACCMODE {
        libc::O_RDONLY => "O_RDONLY",
        libc::O_WRONLY => "O_WRONLY",
        libc::O_RDWR => "O_RDWR",
        _ => "O_ACCMODE",
    };
    let mut text = access.to_owned();
    let mut named = libc::O_ACCMODE as u32;
    for (bits, name) in NAMED {
        let bits = bits as u32;
        if bits != 0 && flags & bits == bits {
            text.push('|');
            text.push_str(name);
            named |= bits;
        }
    }
    let rest = flags & !named;
    if rest != 0 {
        text.push_str(&format!("|0o{rest:o}"));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_the_platform_values() {
        let text = |flags: libc::c_int| open_flags_text(flags as u32);
        assert_eq!(text(libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC), "O_WRONLY|O_CREAT|O_TRUNC");
        assert_eq!(text(libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC), "O_RDONLY|O_DIRECTORY|O_CLOEXEC");
        assert_eq!(text(libc::O_RDWR | libc::O_NOFOLLOW), "O_RDWR|O_NOFOLLOW");
        assert_eq!(text(libc::O_RDONLY | libc::O_DIRECT | O_LARGEFILE), "O_RDONLY|O_DIRECT|O_LARGEFILE");
        assert_eq!(text(libc::O_RDWR | libc::O_TMPFILE), "O_RDWR|O_DIRECTORY|O_TMPFILE");
        assert_eq!(text(libc::O_WRONLY | libc::O_SYNC), "O_WRONLY|O_DSYNC|O_SYNC");
        assert_eq!(text(libc::O_PATH), "O_RDONLY|O_PATH");
        assert_eq!(text(3), "O_ACCMODE");
    }

    #[test]
    fn every_named_flag_is_its_own_bits_and_unknown_bits_are_kept() {
        for (bits, name) in NAMED {
            assert_ne!(bits, 0, "{name}");
            assert!(open_flags_text(bits as u32).split('|').any(|part| part == name), "{name}");
        }
        // __FMODE_EXEC (0o40) in an exec's f_flags has no O_ name.
        assert_eq!(open_flags_text(0o40), "O_RDONLY|0o40");
    }

    /// The two architectures tyrd ships for differ exactly where it matters.
    #[test]
    fn directory_and_nofollow_follow_the_architecture() {
        let (directory, nofollow, direct) = if cfg!(target_arch = "aarch64") {
            (0o40_000, 0o100_000, 0o200_000)
        } else {
            (0o200_000, 0o400_000, 0o40_000)
        };
        assert_eq!(open_flags_text(directory), "O_RDONLY|O_DIRECTORY");
        assert_eq!(open_flags_text(nofollow), "O_RDONLY|O_NOFOLLOW");
        assert_eq!(open_flags_text(direct), "O_RDONLY|O_DIRECT");
    }
}

/* File operations through BPF LSM: lsm/file_open runs for every open of
 * every file after permission checks, lsm/bprm_check_security for every
 * exec once the binary is open (again for a script's interpreter), both in
 * the calling task with the struct file in hand — so the path is exact
 * (bpf_d_path) and policy can refuse the operation with EPERM before it
 * completes. Needs CONFIG_BPF_LSM and "bpf" in the active LSM list; where
 * that is missing this object fails to load, file_syscalls.bpf.c observes
 * opens instead, and file and exec deny are reported as not enforceable.
 *
 * A file is decided on every name it has here: the path asked for and,
 * when the process could see the file under another name than tyrd does
 * (another mount namespace, a bind mount, a chroot, a second mount), its
 * identity — its path in tyrd's mount namespace — and any protected name
 * kept on its inode; the strictest decision stands. Governed processes
 * (agents under a policy that can deny) are also held to their file rules
 * when they link, rename or mount: a hard link to or a rename of a file
 * they may not read or write is refused, and so is a mount over a place
 * they may not write; a directory is decided as everything below it. Their
 * unix socket connects and sends are writes of the socket file, and they
 * may not attach to processes governed less strictly. What cannot be
 * decided for them is refused. */
#define TYR_TASK_STORAGE
#include "lib/common.h"
#include "lib/file_decide.h"
#include "lib/kept_names.h"
#include "lib/governed_ops.h"

/* f_mode bits (include/linux/fs.h). */
#define TYR_FMODE_READ 0x1
#define TYR_FMODE_WRITE 0x2
#define TYR_FMODE_EXEC 0x20
/* File types (include/uapi/linux/stat.h). */
#define TYR_S_IFMT 0170000
#define TYR_S_IFDIR 0040000
#define TYR_S_IFREG 0100000
#define TYR_S_IFLNK 0120000
/* Mount flags (include/linux/mount.h): a kernel-internal mount. */
#define TYR_MNT_INTERNAL 0x4000

/* Whether a name for `dentry`'s inode would reach a subtree: a directory,
 * or a symlink (which may point at one). Such a name is decided as
 * everything below it. */
static __always_inline bool tyr_reaches_subtree(struct dentry *dentry)
{
	struct inode *inode = BPF_CORE_READ(dentry, d_inode);
	if (!inode)
		return false;
	__u32 type = BPF_CORE_READ(inode, i_mode) & TYR_S_IFMT;
	return type == TYR_S_IFDIR || type == TYR_S_IFLNK;
}

SEC("lsm/file_open")
int BPF_PROG(tyr_file_open, struct file *file, int ret)
{
	if (ret)
		return ret; /* already refused */
	struct tyr_config *cfg = tyr_config();
	if (!cfg)
		return 0;
	__u32 fmode = file->f_mode;
	/* The open of an exec's binary: governed and reported as the exec. */
	if (fmode & TYR_FMODE_EXEC)
		return 0;
	struct tyr_who who;
	tyr_who(&who);
	if (who.tgid == cfg->self_tgid)
		return 0;
	__u32 flags = file->f_flags;
	__u32 kind = tyr_open_kind(flags);
	if (!who.meta && !tyr_kind_enabled(cfg, kind))
		return 0;

	__u32 on_task = 0;
	struct tyr_scratch *s = tyr_scratch_claim(cfg, &on_task);
	if (!s) {
		char comm[TYR_COMM_LEN];
		bpf_get_current_comm(comm, sizeof(comm));
		if (!who.governed && tyr_kind_enabled(cfg, kind) && tyr_process_selected(cfg, who.tgid, comm))
			tyr_count_lost(kind); /* this open would have been recorded */
		return tyr_undecided_file(who.meta, who.governed, kind, TYR_FILE_OP_OPEN, file);
	}
	struct tyr_file_fixed *rec = (struct tyr_file_fixed *)s->rec;
	__u32 base = sizeof(*rec);
	tyr_fill_header(&rec->hdr, TYR_REC_FILE, kind);
	long n = bpf_d_path(&file->f_path, (char *)(s->rec + base), TYR_PATH_MAX);
	__u32 path_len = n > 1 ? (n - 1) & (TYR_PATH_MAX - 1) : 0;
	__u32 identity_len = 0;
	__u32 kept = 0;

	/* Read and write intent are checked separately; the stricter wins. */
	struct tyr_checks *c = &s->checks;
	tyr_checks_init(c, &who, on_task);
	c->unnamed = n <= 0;
	if (who.meta) {
		identity_len = tyr_identity_at(cfg, s, on_task, file->f_path.mnt, file->f_path.dentry, base + path_len);
		/* A hard link's or a moved file's protected name decides too. */
		kept = tyr_kept_identity(s, file->f_inode, base + path_len + identity_len);
		bool reads = fmode & TYR_FMODE_READ;
		bool writes = (fmode & TYR_FMODE_WRITE) || kind == TYR_KIND_FILE_WRITE;
		if (reads)
			tyr_check_add(c, base, path_len, TYR_ACTION_FILE_READ, 0, TYR_DECIDED_ON_PATH);
		if (writes)
			tyr_check_add(c, base, path_len, TYR_ACTION_FILE_WRITE, 0, TYR_DECIDED_ON_PATH);
		if (identity_len && reads)
			tyr_check_add(c, base + path_len, identity_len, TYR_ACTION_FILE_READ, 0,
				      TYR_DECIDED_ON_IDENTITY);
		if (identity_len && writes)
			tyr_check_add(c, base + path_len, identity_len, TYR_ACTION_FILE_WRITE, 0,
				      TYR_DECIDED_ON_IDENTITY);
		if (kept && reads)
			tyr_check_add(c, base + path_len + identity_len, kept, TYR_ACTION_FILE_READ, 0,
				      TYR_CHECK_ON_KEPT);
		if (kept && writes)
			tyr_check_add(c, base + path_len + identity_len, kept, TYR_ACTION_FILE_WRITE, 0,
				      TYR_CHECK_ON_KEPT);
	}
	tyr_checks_run(s);
	identity_len = tyr_report_as_identity(s, c, TYR_CHECK_ON_KEPT, base + path_len, identity_len, kept);
	bool deny = c->best.verdict == TYR_VERDICT_DENY;

	/* Decisions other than plain allow are always reported. */
	bool report = tyr_reportable(&c->best) ||
		      (tyr_kind_enabled(cfg, kind) && tyr_process_selected(cfg, who.tgid, rec->hdr.comm));
	if (report && !tyr_reportable(&c->best) && !tyr_ring_has_room(cfg)) {
		tyr_count_lost(kind);
		report = false;
	}
	if (report) {
		tyr_file_record(rec, deny ? -TYR_EPERM : 0, flags, TYR_FILE_OP_OPEN, path_len, 0, identity_len, c);
		tyr_emit(s, base, path_len + identity_len, kind);
	}
	tyr_scratch_release(s, on_task);
	return deny ? -TYR_EPERM : 0;
}

/* An exec begins (once per execve, before any bprm_check_security): no
 * decision from an earlier, failed exec may be attributed to this one. */
SEC("lsm/bprm_creds_for_exec")
int BPF_PROG(tyr_exec_begin, struct linux_binprm *bprm, int ret)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	bpf_map_delete_elem(&tyr_exec_decisions, &tgid);
	return ret;
}

/* Records an exec policy refused: the exec never happens, so this is its
 * only record. No room for the path: the record says why. */
static __always_inline int tyr_exec_refused_undecided(const struct tyr_who *who)
{
	tyr_count(&tyr_refused, TYR_KIND_EXEC);
	struct tyr_exec_fixed *rec = bpf_ringbuf_reserve(&tyr_events, sizeof(*rec), 0);
	if (!rec) {
		tyr_count_lost(TYR_KIND_EXEC);
		return -TYR_EPERM;
	}
	tyr_fill_header(&rec->hdr, TYR_REC_EXEC, TYR_KIND_EXEC);
	rec->hdr.size = sizeof(*rec);
	rec->exe_len = 0;
	rec->argv_len = 0;
	rec->result = -TYR_EPERM;
	rec->reserved = TYR_FAILSAFE_NO_SCRATCH;
	rec->decision.policy_version = who->meta->version;
	rec->decision.rule = 0;
	rec->decision.verdict = TYR_VERDICT_DENY;
	bpf_ringbuf_submit(rec, 0);
	return -TYR_EPERM;
}

SEC("lsm/bprm_check_security")
int BPF_PROG(tyr_exec_check, struct linux_binprm *bprm, int ret)
{
	if (ret)
		return ret;
	struct tyr_config *cfg = tyr_config();
	if (!cfg)
		return 0;
	struct tyr_who who;
	tyr_who(&who);
	if (who.tgid == cfg->self_tgid || !who.meta)
		return 0; /* without policy the exec tracepoint reports the exec */

	__u32 on_task = 0;
	struct tyr_scratch *s = tyr_scratch_claim(cfg, &on_task);
	if (!s) {
		if (!who.governed) {
			tyr_count(&tyr_undecided, TYR_KIND_EXEC);
			return 0;
		}
		return tyr_exec_refused_undecided(&who);
	}
	struct tyr_exec_fixed *rec = (struct tyr_exec_fixed *)s->rec;
	__u32 base = sizeof(*rec);
	tyr_fill_header(&rec->hdr, TYR_REC_EXEC, TYR_KIND_EXEC);
	struct file *exe = bprm->file;
	long n = bpf_d_path(&exe->f_path, (char *)(s->rec + base), TYR_PATH_MAX);
	__u32 path_len = n > 1 ? (n - 1) & (TYR_PATH_MAX - 1) : 0;
	__u32 identity_len = tyr_identity_at(cfg, s, on_task, exe->f_path.mnt, exe->f_path.dentry, base + path_len);
	__u32 kept = tyr_kept_identity(s, exe->f_inode, base + path_len + identity_len);

	struct tyr_checks *c = &s->checks;
	tyr_checks_init(c, &who, on_task);
	c->unnamed = n <= 0;
	tyr_check_add(c, base, path_len, TYR_ACTION_EXEC, 0, TYR_DECIDED_ON_PATH);
	if (identity_len)
		tyr_check_add(c, base + path_len, identity_len, TYR_ACTION_EXEC, 0, TYR_DECIDED_ON_IDENTITY);
	if (kept)
		tyr_check_add(c, base + path_len + identity_len, kept, TYR_ACTION_EXEC, 0, TYR_CHECK_ON_KEPT);
	tyr_checks_run(s);
	identity_len = tyr_report_as_identity(s, c, TYR_CHECK_ON_KEPT, base + path_len, identity_len, kept);
	bool deny = c->best.verdict == TYR_VERDICT_DENY;
	struct tyr_policy_decision stored = c->best;
	if (deny) {
		/* The exec never happens: this is its only record. Its exe is the
		 * name the verdict was decided on. */
		if (c->best_name == TYR_DECIDED_ON_IDENTITY) {
			bpf_probe_read_kernel(s->rec + base, identity_len & (TYR_PATH_MAX - 1),
					      s->rec + ((base + path_len) & TYR_BASE_MASK));
			path_len = identity_len;
		}
		rec->exe_len = path_len;
		rec->argv_len = 0;
		rec->result = -TYR_EPERM;
		rec->reserved = c->failsafe;
		rec->decision = stored;
		tyr_emit(s, base, path_len, TYR_KIND_EXEC);
	} else {
		/* A script's own decision, checked first, stands unless its
		 * interpreter's is stricter. */
		struct tyr_policy_decision *earlier = bpf_map_lookup_elem(&tyr_exec_decisions, &who.tgid);
		if (!earlier || tyr_verdict_rank(stored.verdict) > tyr_verdict_rank(earlier->verdict))
			bpf_map_update_elem(&tyr_exec_decisions, &who.tgid, &stored, BPF_ANY);
	}
	tyr_scratch_release(s, on_task);
	return deny ? -TYR_EPERM : 0;
}

/* A new name for an existing file: the governed may not link a file they
 * may not read or write, nor make a name they may not read or write. */
SEC("lsm/path_link")
int BPF_PROG(tyr_path_link, struct dentry *old_dentry, const struct path *new_dir, struct dentry *new_dentry, int ret)
{
	if (ret)
		return ret;
	struct tyr_who who;
	__u32 on_task = 0;
	int verdict;
	struct tyr_scratch *s = tyr_governed_op_begin(&who, TYR_FILE_OP_LINK, true, &on_task, &verdict);
	if (!s)
		return verdict;
	/* A link is made within one mount: the old file's is new_dir's. */
	struct vfsmount *mnt = BPF_CORE_READ(new_dir, mnt);
	tyr_name_add(s, TYR_NAME_PATH, mnt, old_dentry, NULL);
	struct dentry *new_parent = BPF_CORE_READ(new_dir, dentry);
	tyr_name_add(s, TYR_NAME_CHILD, mnt, new_parent, new_dentry);
	tyr_name_add(s, TYR_NAME_IDENTITY, mnt, old_dentry, NULL);
	tyr_name_add(s, TYR_NAME_CHILD_IDENTITY, mnt, new_parent, new_dentry);
	struct tyr_op_names n;
	tyr_governed_op_names(s, on_task, &n);

	/* A hard link to a symlink is a symlink too. */
	__u32 how = tyr_reaches_subtree(old_dentry) ? TYR_DECIDE_SUBTREE : 0;
	struct tyr_checks *c = &s->checks;
	tyr_checks_init(c, &who, on_task);
	tyr_checks_note_truncated(s);
	if (who.governed)
		tyr_check_both_names(c, &n, how);
	tyr_checks_run(s);
	/* Whoever makes it, a new name for a protected file, or a file at a
	 * protected name, carries the protected name with it. */
	if (c->best.verdict != TYR_VERDICT_DENY)
		tyr_keep_names_of(s, on_task, &who, old_dentry->d_inode, &n);
	tyr_report_new_identity(s, &n);
	return tyr_emit_governed_op(s, on_task, c, TYR_FILE_OP_LINK, &n);
}

/* A file or directory moved: the governed may not move what they may not
 * read or write (out of the rule's reach), a directory holding such files
 * included, nor move anything to a name they may not read or write. */
SEC("lsm/path_rename")
int BPF_PROG(tyr_path_rename, const struct path *old_dir, struct dentry *old_dentry, const struct path *new_dir,
	     struct dentry *new_dentry, unsigned int flags, int ret)
{
	if (ret)
		return ret;
	struct tyr_who who;
	__u32 on_task = 0;
	int verdict;
	struct tyr_scratch *s = tyr_governed_op_begin(&who, TYR_FILE_OP_RENAME, true, &on_task, &verdict);
	if (!s)
		return verdict;
	struct vfsmount *old_mnt = BPF_CORE_READ(old_dir, mnt);
	struct vfsmount *new_mnt = BPF_CORE_READ(new_dir, mnt);
	struct dentry *new_parent = BPF_CORE_READ(new_dir, dentry);
	tyr_name_add(s, TYR_NAME_CHILD, old_mnt, BPF_CORE_READ(old_dir, dentry), old_dentry);
	tyr_name_add(s, TYR_NAME_CHILD, new_mnt, new_parent, new_dentry);
	tyr_name_add(s, TYR_NAME_IDENTITY, old_mnt, old_dentry, NULL);
	tyr_name_add(s, TYR_NAME_CHILD_IDENTITY, new_mnt, new_parent, new_dentry);
	struct tyr_op_names n;
	tyr_governed_op_names(s, on_task, &n);

	/* A directory, or a symlink that may point at one, is decided as
	 * everything below it — on either side: an exchange moves the new
	 * name's inode too. */
	__u32 how = 0;
	if (tyr_reaches_subtree(old_dentry) || tyr_reaches_subtree(new_dentry)) {
		how = TYR_DECIDE_SUBTREE;
		((struct tyr_file_fixed *)s->rec)->hdr.flags |= TYR_F_DIRECTORY;
	}
	struct tyr_checks *c = &s->checks;
	tyr_checks_init(c, &who, on_task);
	tyr_checks_note_truncated(s);
	if (who.governed)
		tyr_check_both_names(c, &n, how);
	tyr_checks_run(s);
	/* Whoever moves it, a protected file keeps its protected name, and a
	 * file moved to a protected name takes it. */
	if (c->best.verdict != TYR_VERDICT_DENY && !how)
		tyr_keep_names_of(s, on_task, &who, old_dentry->d_inode, &n);
	tyr_report_new_identity(s, &n);
	return tyr_emit_governed_op(s, on_task, c, TYR_FILE_OP_RENAME, &n);
}

/* A name made that a later write would go through — a symlink, a FIFO or
 * socket node at a protected name would pass what is written there to the
 * agent — or a name removed, or a file cut short by path: decided on that
 * name for governed processes. */
SEC("lsm/path_symlink")
int BPF_PROG(tyr_path_symlink, const struct path *dir, struct dentry *dentry, const char *old_name, int ret)
{
	if (ret)
		return ret;
	/* What the symlink may point at is reachable below its name. */
	return tyr_governed_name(TYR_FILE_OP_SYMLINK, TYR_DECIDE_SUBTREE, true, BPF_CORE_READ(dir, mnt),
				 BPF_CORE_READ(dir, dentry), dentry, old_name, 0);
}

SEC("lsm/path_mknod")
int BPF_PROG(tyr_path_mknod, const struct path *dir, struct dentry *dentry, umode_t mode, unsigned int dev, int ret)
{
	if (ret)
		return ret;
	/* Regular files (every open that creates one comes here too) are
	 * decided at their open. */
	__u32 type = mode & TYR_S_IFMT;
	if (type == 0 || type == TYR_S_IFREG)
		return 0;
	return tyr_governed_name(TYR_FILE_OP_MKNOD, 0, true, BPF_CORE_READ(dir, mnt), BPF_CORE_READ(dir, dentry),
				 dentry, NULL, 0);
}

SEC("lsm/path_unlink")
int BPF_PROG(tyr_path_unlink, const struct path *dir, struct dentry *dentry, int ret)
{
	if (ret)
		return ret;
	return tyr_governed_name(TYR_FILE_OP_UNLINK, 0, false, BPF_CORE_READ(dir, mnt), BPF_CORE_READ(dir, dentry),
				 dentry, NULL, 0);
}

SEC("lsm/path_truncate")
int BPF_PROG(tyr_path_truncate, const struct path *path, int ret)
{
	if (ret)
		return ret;
	/* Before 6.2 ftruncate(2) comes here too: a memfd or shared memory
	 * segment (on an internal mount) has no name a rule could give. */
	struct vfsmount *mnt = BPF_CORE_READ(path, mnt);
	if (BPF_CORE_READ(mnt, mnt_flags) & TYR_MNT_INTERNAL)
		return 0;
	return tyr_governed_name(TYR_FILE_OP_TRUNCATE, 0, false, mnt, BPF_CORE_READ(path, dentry), NULL, NULL, 0);
}

/* mount(2) flags (include/uapi/linux/mount.h). */
#define TYR_MS_REMOUNT 32
#define TYR_MS_BIND 4096
#define TYR_MS_MOVE 8192
#define TYR_MS_PROPAGATION ((1 << 17) | (1 << 18) | (1 << 19) | (1 << 20)) /* unbindable, private, slave, shared */

/* Refuses a governed agent's overlay or FUSE mount: such a filesystem
 * serves other files' contents under names of its own, which no identity
 * can see through. */
static __always_inline int tyr_refuse_stacked_mount(void)
{
	struct tyr_who who;
	if (!tyr_who_governed(&who))
		return 0;
	struct tyr_file_fixed *rec = bpf_ringbuf_reserve(&tyr_events, sizeof(*rec), 0);
	if (rec) {
		tyr_refusal_record(rec, TYR_KIND_FILE_WRITE, TYR_FILE_OP_MOUNT, 0, who.meta->version,
				   TYR_FAILSAFE_STACKED_MOUNT);
		bpf_ringbuf_submit(rec, 0);
	} else {
		tyr_count_lost(TYR_KIND_FILE_WRITE);
	}
	return -TYR_EPERM;
}

/* Whether a filesystem type is overlay or FUSE ("fuse", "fuse.sshfs", ...). */
static __always_inline bool tyr_stacked_type(const char *type)
{
	char name[8] = {};
	if (!type || bpf_probe_read_kernel_str(name, sizeof(name), type) < 0)
		return false;
	bool overlay = name[0] == 'o' && name[1] == 'v' && name[2] == 'e' && name[3] == 'r' && name[4] == 'l' &&
		       name[5] == 'a' && name[6] == 'y';
	bool fuse = name[0] == 'f' && name[1] == 'u' && name[2] == 's' && name[3] == 'e';
	return overlay || fuse;
}

/* Decides a mount over `target` (its path, then `source` as given): a
 * mount replaces everything below its mountpoint, so it is a write there.
 * Only mounts in tyrd's mount namespace: elsewhere a mount changes the
 * agent's own view, and what it reads through it is decided on its
 * identity. */
static __always_inline int tyr_mount_decide(const struct path *target, const char *source)
{
	struct tyr_config *cfg = tyr_config();
	if (!cfg)
		return 0;
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	if (BPF_CORE_READ(task, nsproxy, mnt_ns, ns.inum) != cfg->init_mnt_ns)
		return 0;
	return tyr_governed_name(TYR_FILE_OP_MOUNT, TYR_DECIDE_SUBTREE, false, BPF_CORE_READ(target, mnt),
				 BPF_CORE_READ(target, dentry), NULL, source, 0);
}

SEC("lsm/sb_mount")
int BPF_PROG(tyr_sb_mount, const char *dev_name, const struct path *path, const char *type, unsigned long flags,
	     void *data, int ret)
{
	if (ret)
		return ret;
	/* Options or propagation of an existing mount: what it shows is unchanged. */
	if ((flags & TYR_MS_REMOUNT) || ((flags & TYR_MS_PROPAGATION) && !(flags & (TYR_MS_BIND | TYR_MS_MOVE))))
		return 0;
	if (!(flags & (TYR_MS_BIND | TYR_MS_MOVE)) && tyr_stacked_type(type))
		return tyr_refuse_stacked_mount();
	return tyr_mount_decide(path, dev_name);
}

SEC("lsm/move_mount")
int BPF_PROG(tyr_move_mount, const struct path *from_path, const struct path *to_path, int ret)
{
	if (ret)
		return ret;
	/* A detached overlay or FUSE mount (fsopen/fsmount) being attached. */
	if (tyr_stacked_type(BPF_CORE_READ(from_path, mnt, mnt_sb, s_type, name)))
		return tyr_refuse_stacked_mount();
	return tyr_mount_decide(to_path, NULL);
}

/* A unix socket's peer, reached by path: connecting or sending to it is a
 * write of the socket file (as the kernel's permission check has it), so
 * file rules decide it for governed processes. That is how work is handed
 * to a service outside the agent's lineage (the session bus and systemd's
 * socket behind systemd-run, a tmux server, an agent socket): a rule on
 * the socket's path keeps the agent from it. Sockets with no path
 * (abstract, unbound) have no name a rule could give. */
static __always_inline int tyr_unix_decide(struct sock *peer)
{
	struct unix_sock *u = (struct unix_sock *)peer;
	struct dentry *dentry = BPF_CORE_READ(u, path.dentry);
	if (dentry)
		return tyr_governed_name(TYR_FILE_OP_CONNECT, 0, false, BPF_CORE_READ(u, path.mnt), dentry, NULL, NULL,
					 0);
	/* An abstract name ("\0/tmp/.X11-unix/X0"): decided as its text after
	 * the NUL, which a rule on the path it mirrors matches. */
	struct unix_address *addr = BPF_CORE_READ(u, addr);
	if (!addr)
		return 0; /* not bound: nothing names it */
	int len = BPF_CORE_READ(addr, len) - (int)sizeof(__u16) - 1;
	if (len <= 0)
		return 0;
	const char *name = (const char *)addr->name[0].sun_path + 1;
	/* Only a name that reads as a path: others (autobound ones) mirror
	 * nothing a rule names. */
	char first = 0;
	if (bpf_probe_read_kernel(&first, 1, name) || first != '/')
		return 0;
	return tyr_governed_name(TYR_FILE_OP_CONNECT, 0, false, NULL, NULL, NULL, name, len);
}

SEC("lsm/unix_stream_connect")
int BPF_PROG(tyr_unix_connect, struct sock *sock, struct sock *other, struct sock *newsk, int ret)
{
	if (ret)
		return ret;
	return tyr_unix_decide(other);
}

SEC("lsm/unix_may_send")
int BPF_PROG(tyr_unix_send, struct socket *sock, struct socket *other, int ret)
{
	if (ret)
		return ret;
	return tyr_unix_decide(BPF_CORE_READ(other, sk));
}

/* ptrace access modes (include/linux/ptrace.h). */
#define TYR_PTRACE_MODE_ATTACH 0x02

/* The record of a refused ptrace: the target as /proc/PID. */
struct tyr_refused_ptrace {
	struct tyr_file_fixed rec;
	char path[32];
};

/* Governed agents may not reach into a process governed less strictly
 * (ptrace, pidfd_getfd, process_vm_writev, /proc/PID/mem: all ask for
 * attach access): what they did there would escape their policy. Reading
 * (/proc/PID/stat and the like) stays open. */
SEC("lsm/ptrace_access_check")
int BPF_PROG(tyr_ptrace_access, struct task_struct *child, unsigned int mode, int ret)
{
	if (ret)
		return ret;
	if (!(mode & TYR_PTRACE_MODE_ATTACH))
		return 0;
	struct tyr_who who;
	if (!tyr_who_governed(&who))
		return 0;
	__u32 target = BPF_CORE_READ(child, tgid);
	if (target == who.tgid)
		return 0;
	/* Its own kind (its descendants included) is governed alike. */
	struct tyr_agent_class *theirs = bpf_map_lookup_elem(&tyr_agents, &target);
	if (!theirs)
		theirs = bpf_task_storage_get(&tyr_task_agents, child->group_leader, 0, 0);
	if (theirs && who.agent && theirs->agent_type == who.agent->agent_type)
		return 0;
	struct tyr_refused_ptrace *out = bpf_ringbuf_reserve(&tyr_events, sizeof(*out), 0);
	if (!out) {
		tyr_count_lost(TYR_KIND_FILE_WRITE);
		return -TYR_EPERM;
	}
	__u64 args[1] = { target };
	long n = bpf_snprintf(out->path, sizeof(out->path), "/proc/%d", args, sizeof(args));
	__u32 path_len = n > 1 ? (n - 1) & (sizeof(out->path) - 1) : 0;
	tyr_refusal_record(&out->rec, TYR_KIND_FILE_WRITE, TYR_FILE_OP_PTRACE, path_len, who.meta->version,
			   TYR_FAILSAFE_NONE);
	bpf_ringbuf_submit(out, 0);
	return -TYR_EPERM;
}

/* Governed agents may be kept out of new user namespaces (where they could
 * get mount and chroot rights); off unless tyrd is told so. */
SEC("lsm/userns_create")
int BPF_PROG(tyr_userns_create, const struct cred *cred, int ret)
{
	if (ret)
		return ret;
	struct tyr_config *cfg = tyr_config();
	if (!cfg || !cfg->agent_userns_deny)
		return 0;
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct tyr_agent_class *agent = tyr_agent_of(tgid);
	if (!agent || !agent->agent_type)
		return 0;
	struct tyr_file_fixed *rec = bpf_ringbuf_reserve(&tyr_events, sizeof(*rec), 0);
	if (rec) {
		tyr_refusal_record(rec, TYR_KIND_FILE_WRITE, TYR_FILE_OP_USERNS, 0, 0, TYR_FAILSAFE_NONE);
		bpf_ringbuf_submit(rec, 0);
	} else {
		tyr_count_lost(TYR_KIND_FILE_WRITE);
	}
	return -TYR_EPERM;
}

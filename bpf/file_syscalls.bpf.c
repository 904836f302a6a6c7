/* File opens through the open syscalls: the fallback when lsm/file_open
 * cannot load (observation only, nothing can be denied from here).
 *
 * sys_enter_* remembers the arguments per thread, sys_exit_* emits the
 * record once the result is known: after a successful open, the path comes
 * from the opened file itself (absolute, symlinks and dirfd resolved); after
 * a failed one, from the name as passed plus the directory it is relative
 * to. The syscall tracepoints are stable ABI; `open` and `creat` exist only
 * on architectures that still have those syscalls (x86_64, not aarch64),
 * which is why each attaches on its own. */
#include "lib/common.h"
#include "lib/path.h"

#define TYR_AT_FDCWD -100

struct tyr_open_args {
	const char *filename;
	__s32 dfd;
	__u32 flags;
	__u32 kind;
	__u32 reserved;
};

/* Arguments of the open in flight, per thread. LRU: a thread killed inside
 * the syscall never reaches sys_exit, and its entry must not stay forever. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct tyr_open_args);
} tyr_open_args_map SEC(".maps");

static __always_inline int tyr_open_enter(__s32 dfd, const char *filename, __u32 flags)
{
	struct tyr_config *cfg = tyr_config();
	if (!cfg)
		return 0;
	__u32 kind = tyr_open_kind(flags);
	__u64 id = bpf_get_current_pid_tgid();
	if (cfg->policy_unfiltered) {
		/* tyrd decides file policy from these records: every open counts. */
		if ((__u32)(id >> 32) == cfg->self_tgid)
			return 0;
	} else {
		if (!tyr_kind_enabled(cfg, kind))
			return 0;
		char comm[TYR_COMM_LEN];
		bpf_get_current_comm(comm, sizeof(comm));
		if (!tyr_process_selected(cfg, id >> 32, comm))
			return 0;
	}
	struct tyr_open_args args = {
		.filename = filename,
		.dfd = dfd,
		.flags = flags,
		.kind = kind,
	};
	bpf_map_update_elem(&tyr_open_args_map, &id, &args, BPF_ANY);
	return 0;
}

/* The struct file behind `fd` in the current task's table, or NULL. */
static __always_inline struct file *tyr_fd_file(struct task_struct *task, __s64 fd)
{
	struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);
	unsigned int max_fds = BPF_CORE_READ(fdt, max_fds);
	if (fd < 0 || fd >= max_fds)
		return NULL;
	struct file **fds = BPF_CORE_READ(fdt, fd);
	struct file *file = NULL;
	bpf_probe_read_kernel(&file, sizeof(file), &fds[fd]);
	return file;
}

static __always_inline int tyr_open_exit(long ret)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct tyr_open_args *found = bpf_map_lookup_elem(&tyr_open_args_map, &id);
	if (!found)
		return 0;
	struct tyr_open_args args = *found;
	bpf_map_delete_elem(&tyr_open_args_map, &id);

	struct tyr_config *cfg = tyr_config();
	if (!cfg || !tyr_ring_has_room(cfg)) {
		tyr_count_lost(args.kind);
		return 0;
	}
	__u32 on_task = 0;
	struct tyr_scratch *s = tyr_scratch_claim(cfg, &on_task);
	if (!s) {
		tyr_count_lost(args.kind);
		return 0;
	}
	struct tyr_file_fixed *rec = (struct tyr_file_fixed *)s->rec;
	__u8 *data = s->rec + sizeof(*rec);
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();

	tyr_fill_header(&rec->hdr, TYR_REC_FILE, args.kind);
	rec->result = ret;
	rec->open_flags = args.flags;
	rec->source = TYR_FILE_SOURCE_SYSCALL;
	rec->op = TYR_FILE_OP_OPEN;
	rec->decided_on = TYR_DECIDED_ON_PATH;
	rec->identity_len = 0;
	rec->failsafe = TYR_FAILSAFE_NONE;
	rec->reserved = 0;
	rec->reserved2 = 0;
	/* Observation only: policy is not decided here. */
	rec->decision.policy_version = 0;
	rec->decision.rule = 0;
	rec->decision.verdict = 0;

	__u32 path_len = 0;
	__u32 name_len = 0;
	if (ret >= 0) {
		struct file *file = tyr_fd_file(task, ret);
		if (file) {
			struct path p = BPF_CORE_READ(file, f_path);
			path_len = tyr_resolve_path(s, on_task, &p, sizeof(*rec), &rec->hdr.flags);
		}
	} else {
		char first = 0;
		bpf_probe_read_user(&first, 1, args.filename);
		if (first != '/') {
			struct path dir;
			bool have_dir = false;
			if (args.dfd == TYR_AT_FDCWD) {
				dir = BPF_CORE_READ(task, fs, pwd);
				have_dir = true;
			} else {
				struct file *dir_file = tyr_fd_file(task, args.dfd);
				if (dir_file) {
					dir = BPF_CORE_READ(dir_file, f_path);
					have_dir = true;
				}
			}
			if (have_dir)
				path_len = tyr_resolve_path(s, on_task, &dir, sizeof(*rec), &rec->hdr.flags);
		}
		long n = bpf_probe_read_user_str(data + (path_len & TYR_PATH_MASK), TYR_PATH_MAX, args.filename);
		if (n > 1)
			name_len = n - 1;
		if (n == TYR_PATH_MAX)
			rec->hdr.flags |= TYR_F_TRUNCATED;
	}
	rec->path_len = path_len;
	rec->name_len = name_len;
	tyr_emit(s, sizeof(*rec), path_len + name_len, args.kind);
	tyr_scratch_release(s, on_task);
	return 0;
}

SEC("tp/syscalls/sys_enter_openat")
int tyr_enter_openat(struct trace_event_raw_sys_enter *ctx)
{
	return tyr_open_enter(ctx->args[0], (const char *)ctx->args[1], ctx->args[2]);
}

SEC("tp/syscalls/sys_exit_openat")
int tyr_exit_openat(struct trace_event_raw_sys_exit *ctx)
{
	return tyr_open_exit(ctx->ret);
}

SEC("tp/syscalls/sys_enter_openat2")
int tyr_enter_openat2(struct trace_event_raw_sys_enter *ctx)
{
	struct open_how how = {};
	bpf_probe_read_user(&how, sizeof(how), (const void *)ctx->args[2]);
	return tyr_open_enter(ctx->args[0], (const char *)ctx->args[1], how.flags);
}

SEC("tp/syscalls/sys_exit_openat2")
int tyr_exit_openat2(struct trace_event_raw_sys_exit *ctx)
{
	return tyr_open_exit(ctx->ret);
}

SEC("tp/syscalls/sys_enter_open")
int tyr_enter_open(struct trace_event_raw_sys_enter *ctx)
{
	return tyr_open_enter(TYR_AT_FDCWD, (const char *)ctx->args[0], ctx->args[1]);
}

SEC("tp/syscalls/sys_exit_open")
int tyr_exit_open(struct trace_event_raw_sys_exit *ctx)
{
	return tyr_open_exit(ctx->ret);
}

SEC("tp/syscalls/sys_enter_creat")
int tyr_enter_creat(struct trace_event_raw_sys_enter *ctx)
{
	return tyr_open_enter(TYR_AT_FDCWD, (const char *)ctx->args[0],
			      TYR_O_CREAT | TYR_O_WRONLY | TYR_O_TRUNC);
}

SEC("tp/syscalls/sys_exit_creat")
int tyr_exit_creat(struct trace_event_raw_sys_exit *ctx)
{
	return tyr_open_exit(ctx->ret);
}

/* Process lifecycle: exec, fork and exit, from the scheduler tracepoints.
 *
 * These tracepoints are stable ABI and present on every kernel tyr
 * supports. Lifecycle records are never filtered or sampled: tyrd's process
 * cache and AI-agent inheritance depend on seeing every one. They may use
 * the ring's headroom, which hot-path records leave free. */
#include "lib/common.h"
#include "lib/path.h"

SEC("tp/sched/sched_process_exec")
int tyr_exec(struct trace_event_raw_sched_process_exec *ctx)
{
	struct tyr_config *cfg = tyr_config();
	__u32 on_task = 0;
	struct tyr_scratch *s = cfg ? tyr_scratch_claim(cfg, &on_task) : NULL;
	if (!s) {
		tyr_count_lost(TYR_KIND_EXEC);
		return 0;
	}
	struct tyr_exec_fixed *rec = (struct tyr_exec_fixed *)s->rec;
	__u8 *data = s->rec + sizeof(*rec);
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();

	tyr_fill_header(&rec->hdr, TYR_REC_EXEC, TYR_KIND_EXEC);

	struct file *exe = BPF_CORE_READ(task, mm, exe_file);
	__u32 exe_len = 0;
	if (exe) {
		struct path exe_path = BPF_CORE_READ(exe, f_path);
		exe_len = tyr_resolve_path(s, on_task, &exe_path, sizeof(*rec), &rec->hdr.flags);
	}

	unsigned long arg_start = BPF_CORE_READ(task, mm, arg_start);
	unsigned long arg_end = BPF_CORE_READ(task, mm, arg_end);
	__u32 argv_len = 0;
	if (arg_end > arg_start) {
		__u64 want = arg_end - arg_start;
		if (want > TYR_ARGV_MAX) {
			want = TYR_ARGV_MAX;
			rec->hdr.flags |= TYR_F_TRUNCATED;
		}
		if (bpf_probe_read_user(data + (exe_len & (TYR_PATH_MAX - 1)), want & (TYR_ARGV_MAX * 2 - 1),
					(const void *)arg_start) == 0)
			argv_len = want;
	}
	rec->exe_len = exe_len;
	rec->argv_len = argv_len;
	rec->result = 0;
	rec->reserved = 0;
	/* The policy decision lsm/bprm_check_security took for this exec, if any. */
	__u32 tgid = rec->hdr.pid;
	struct tyr_policy_decision *decided = bpf_map_lookup_elem(&tyr_exec_decisions, &tgid);
	if (decided) {
		rec->decision = *decided;
		bpf_map_delete_elem(&tyr_exec_decisions, &tgid);
	} else {
		rec->decision.policy_version = 0;
		rec->decision.rule = 0;
		rec->decision.verdict = 0;
	}
	tyr_emit(s, sizeof(*rec), exe_len + argv_len, TYR_KIND_EXEC);
	tyr_scratch_release(s, on_task);
	return 0;
}

SEC("tp_btf/sched_process_fork")
int BPF_PROG(tyr_fork, struct task_struct *parent, struct task_struct *child)
{
	/* A new thread is not a new process. */
	if (child->pid != child->tgid)
		return 0;
	/* The child belongs to its parent's agent from its first syscall. */
	__u32 parent_tgid = parent->tgid;
	__u32 child_tgid = child->tgid;
	struct tyr_agent_class *agent = bpf_map_lookup_elem(&tyr_agents, &parent_tgid);
	if (!agent)
		agent = bpf_task_storage_get(&tyr_task_agents, parent->group_leader, 0, 0);
	if (!agent) {
		/* An entry a process left behind must not pass to the next
		 * process given its pid. */
		bpf_map_delete_elem(&tyr_agents, &child_tgid);
	} else {
		struct tyr_agent_class inherited = *agent;
		if (bpf_map_update_elem(&tyr_agents, &child_tgid, &inherited, BPF_ANY)) {
			/* No room: the child stays governed through its task,
			 * and the shortage is counted. */
			tyr_count_health(TYR_HEALTH_AGENTS_FULL);
			bpf_task_storage_get(&tyr_task_agents, child, &inherited, BPF_LOCAL_STORAGE_GET_F_CREATE);
		}
	}
	struct tyr_fork_fixed *rec = bpf_ringbuf_reserve(&tyr_events, sizeof(*rec), 0);
	if (!rec) {
		tyr_count_lost(TYR_KIND_FORK);
		return 0;
	}
	tyr_fill_header(&rec->hdr, TYR_REC_FORK, TYR_KIND_FORK);
	rec->hdr.size = sizeof(*rec);
	rec->child_pid = child->tgid;
	rec->reserved = 0;
	bpf_ringbuf_submit(rec, 0);
	return 0;
}

SEC("tp/sched/sched_process_exit")
int tyr_exit(struct trace_event_raw_sched_process_template *ctx)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	/* Only the last thread out ends the process: signal->live drops to
	 * zero before this tracepoint fires. */
	if (BPF_CORE_READ(task, signal, live.counter) != 0)
		return 0;
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct tyr_exit_fixed *rec = bpf_ringbuf_reserve(&tyr_events, sizeof(*rec), 0);
	if (rec) {
		tyr_fill_header(&rec->hdr, TYR_REC_EXIT, TYR_KIND_EXIT);
		rec->hdr.size = sizeof(*rec);
		rec->exit_code = BPF_CORE_READ(task, exit_code);
		rec->reserved = 0;
		bpf_ringbuf_submit(rec, 0);
	} else {
		tyr_count_lost(TYR_KIND_EXIT);
	}
	/* After the record, which still names the process's agent. */
	bpf_map_delete_elem(&tyr_agents, &tgid);
	return 0;
}

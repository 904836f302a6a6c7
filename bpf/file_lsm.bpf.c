/* File opens and execs through BPF LSM: lsm/file_open runs for every open
 * of every file after permission checks, lsm/bprm_check_security for every
 * exec once the binary is open (again for a script's interpreter), both in
 * the calling task with the struct file in hand — so the path is exact
 * (bpf_d_path) and policy can refuse the operation with EPERM before it
 * completes. Needs CONFIG_BPF_LSM and "bpf" in the active LSM list; where
 * that is missing this object fails to load, file_syscalls.bpf.c observes
 * opens instead, and file and exec deny are reported as not enforceable. */
#include "lib/common.h"
#include "lib/path_policy.h"

#define TYR_EPERM 1
/* f_mode bits (include/linux/fs.h). */
#define TYR_FMODE_READ 0x1
#define TYR_FMODE_WRITE 0x2
#define TYR_FMODE_EXEC 0x20

static __always_inline __u32 tyr_class(const struct tyr_record_header *hdr)
{
	return hdr->agent_type ? hdr->agent_type : TYR_CLASS_UNKNOWN;
}

static __always_inline bool tyr_reportable(const struct tyr_decision *d)
{
	return d->verdict == TYR_VERDICT_DENY || d->verdict == TYR_VERDICT_ALERT;
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
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	if (tgid == cfg->self_tgid)
		return 0;
	__u32 flags = file->f_flags;
	__u32 kind = tyr_open_kind(flags);
	/* One read of the policy switch for the whole operation. */
	__u32 slot = 0;
	struct tyr_policy_slot *meta = tyr_policy_in_force(&slot);
	bool policy = meta != NULL;
	if (!policy && !tyr_kind_enabled(cfg, kind))
		return 0;

	struct tyr_scratch *s = tyr_scratch_claim();
	if (!s) {
		tyr_count_lost(kind);
		if (policy)
			tyr_count_undecided(kind);
		return 0;
	}
	struct tyr_file_fixed *rec = (struct tyr_file_fixed *)s->rec;
	__u8 *data = s->rec + sizeof(*rec);
	tyr_fill_header(&rec->hdr, TYR_REC_FILE, kind);
	long n = bpf_d_path(&file->f_path, (char *)data, TYR_PATH_MAX);
	__u32 path_len = n > 1 ? (n - 1) & (TYR_PATH_MAX - 1) : 0;

	/* Read and write intent are checked separately; the stricter wins. */
	struct tyr_decision decision;
	tyr_decision_none(&decision);
	if (meta) {
		__u32 class = tyr_class(&rec->hdr);
		bool reads = fmode & TYR_FMODE_READ;
		bool writes = (fmode & TYR_FMODE_WRITE) || kind == TYR_KIND_FILE_WRITE;
		if (reads)
			tyr_path_decide(s, slot, meta, sizeof(*rec), path_len, class, TYR_ACTION_FILE_READ, &decision);
		if (writes) {
			struct tyr_decision write_decision;
			tyr_path_decide(s, slot, meta, sizeof(*rec), path_len, class, TYR_ACTION_FILE_WRITE,
					&write_decision);
			if (reads)
				tyr_decision_stricter(&decision, &write_decision);
			else
				decision = write_decision;
		}
	}
	bool deny = decision.verdict == TYR_VERDICT_DENY;

	/* Decisions other than plain allow are always reported. */
	bool report = tyr_reportable(&decision) ||
		      (tyr_kind_enabled(cfg, kind) && tyr_process_selected(cfg, tgid, rec->hdr.comm));
	if (report && !tyr_reportable(&decision) && !tyr_ring_has_room(cfg)) {
		tyr_count_lost(kind);
		report = false;
	}
	if (report) {
		rec->result = deny ? -TYR_EPERM : 0;
		rec->open_flags = flags;
		rec->source = TYR_FILE_SOURCE_LSM;
		rec->reserved = 0;
		rec->path_len = path_len;
		rec->name_len = 0;
		tyr_decision_store(&decision, &rec->decision);
		tyr_emit(s, sizeof(*rec), path_len, kind);
	}
	tyr_scratch_release(s);
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

/* Deny over alert over allow. */
static __always_inline __u32 tyr_verdict_rank(__u32 verdict)
{
	return verdict == TYR_VERDICT_DENY ? 2 : verdict == TYR_VERDICT_ALERT ? 1 : 0;
}

SEC("lsm/bprm_check_security")
int BPF_PROG(tyr_exec_check, struct linux_binprm *bprm, int ret)
{
	if (ret)
		return ret;
	struct tyr_config *cfg = tyr_config();
	if (!cfg)
		return 0;
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	if (tgid == cfg->self_tgid)
		return 0;
	__u32 slot = 0;
	struct tyr_policy_slot *meta = tyr_policy_in_force(&slot);
	if (!meta)
		return 0; /* the exec tracepoint reports the exec */

	struct tyr_scratch *s = tyr_scratch_claim();
	if (!s) {
		tyr_count_undecided(TYR_KIND_EXEC);
		return 0;
	}
	struct tyr_exec_fixed *rec = (struct tyr_exec_fixed *)s->rec;
	__u8 *data = s->rec + sizeof(*rec);
	tyr_fill_header(&rec->hdr, TYR_REC_EXEC, TYR_KIND_EXEC);
	long n = bpf_d_path(&bprm->file->f_path, (char *)data, TYR_PATH_MAX);
	__u32 path_len = n > 1 ? (n - 1) & (TYR_PATH_MAX - 1) : 0;

	struct tyr_decision decision;
	tyr_path_decide(s, slot, meta, sizeof(*rec), path_len, tyr_class(&rec->hdr), TYR_ACTION_EXEC, &decision);
	bool deny = decision.verdict == TYR_VERDICT_DENY;
	struct tyr_policy_decision stored;
	tyr_decision_store(&decision, &stored);
	if (deny) {
		/* The exec never happens: this is its only record. */
		rec->exe_len = path_len;
		rec->argv_len = 0;
		rec->result = -TYR_EPERM;
		rec->reserved = 0;
		rec->decision = stored;
		tyr_emit(s, sizeof(*rec), path_len, TYR_KIND_EXEC);
	} else {
		/* A script's own decision, checked first, stands unless its
		 * interpreter's is stricter. */
		struct tyr_policy_decision *earlier = bpf_map_lookup_elem(&tyr_exec_decisions, &tgid);
		if (!earlier || tyr_verdict_rank(stored.verdict) > tyr_verdict_rank(earlier->verdict))
			bpf_map_update_elem(&tyr_exec_decisions, &tgid, &stored, BPF_ANY);
	}
	tyr_scratch_release(s);
	return deny ? -TYR_EPERM : 0;
}

/* File decisions of the LSM hooks: every name an operation involves (the
 * path asked for, the file's identity, a link's or rename's other path) is
 * checked for the actions the operation amounts to, and the strictest
 * decision stands. The checks run as one bpf_loop over a list, so the
 * verifier checks one copy of the path decision however many names an
 * operation has. */
#pragma once

#include "path_policy.h"
#include "names.h"

#define TYR_EPERM 1

static __always_inline void tyr_check_add(struct tyr_checks *c, __u32 base, __u32 len, __u32 action, __u32 how,
					  __u32 name)
{
	__u32 i = c->count;
	if (i >= TYR_CHECKS)
		return;
	c->count = i + 1;
	barrier_var(i); /* keeps the mask the verifier needs */
	struct tyr_check *k = &c->list[i & (TYR_CHECKS - 1)];
	k->base = base;
	k->len = len;
	k->action = action;
	k->how = how;
	k->name = name;
}

/* Checks a name for reading and writing. */
static __always_inline void tyr_check_rw(struct tyr_checks *c, __u32 base, __u32 len, __u32 how, __u32 name)
{
	tyr_check_add(c, base, len, TYR_ACTION_FILE_READ, how, name);
	tyr_check_add(c, base, len, TYR_ACTION_FILE_WRITE, how, name);
}

/* ctx: the on_task of the scratch the checks are in. */
static long tyr_check_step(__u64 index, void *ctx)
{
	struct tyr_scratch *s = tyr_scratch_entry(*(__u32 *)ctx);
	if (!s)
		return 1;
	struct tyr_checks *c = &s->checks;
	if (index >= c->count || index >= TYR_CHECKS)
		return 1;
	__u32 slot = c->slot;
	struct tyr_policy_slot *meta = bpf_map_lookup_elem(&tyr_policy_slots, &slot);
	if (!meta)
		return 1;
	struct tyr_config *cfg = tyr_config();
	if (!cfg || ((cfg->fault_inject & TYR_FAULT_INCOMPLETE) && index > 0))
		return 1;
	const struct tyr_check *k = &c->list[index & (TYR_CHECKS - 1)];
	struct tyr_decision d;
	__u32 how = k->how | (c->on_task ? TYR_DECIDE_ON_TASK : 0);
	tyr_path_decide(s, how, slot, meta, k->base, k->len, c->class, k->action, &d);
	if (index == 0 || tyr_verdict_rank(d.verdict) > tyr_verdict_rank(c->best.verdict)) {
		tyr_decision_store(&d, &c->best);
		c->best_action = k->action;
		c->best_name = k->name;
	}
	c->done = index + 1;
	return 0;
}

/* Runs the checks of s->checks, whose names s->names resolved; the
 * strictest decision is in c->best. When a name or a check could not be
 * resolved (its loop lost the scratch, or the path is longer than the
 * kernel resolves), a governed process is refused: what was decided may
 * not be the strictest. */
static __always_inline void tyr_checks_run(struct tyr_scratch *s)
{
	struct tyr_checks *c = &s->checks;
	c->best.policy_version = 0;
	c->best.rule = 0;
	c->best.verdict = 0;
	c->best_action = 0;
	c->best_name = TYR_DECIDED_ON_PATH;
	c->failsafe = TYR_FAILSAFE_NONE;
	c->done = 0;
	__u32 on_task = c->on_task;
	bpf_loop(TYR_CHECKS, tyr_check_step, &on_task, 0);
	if (!c->governed || (c->done >= c->count && s->names.done >= s->names.count && !c->unnamed))
		return;
	tyr_count_health(TYR_HEALTH_INCOMPLETE);
	__u32 slot = c->slot;
	struct tyr_policy_slot *meta = bpf_map_lookup_elem(&tyr_policy_slots, &slot);
	c->best.policy_version = meta ? meta->version : 0;
	c->best.rule = 0;
	c->best.verdict = TYR_VERDICT_DENY;
	c->failsafe = TYR_FAILSAFE_INCOMPLETE;
}

/* Checks on names a record reports as its identity when they decide (the
 * record has room for three names): the name kept on a file's inode, and
 * a link's or rename's new name's identity. */
#define TYR_CHECK_ON_KEPT 2
#define TYR_CHECK_ON_NEW_IDENTITY 3

/* After the checks: when the name checked as `code` (other_len bytes right
 * after the identity at s->rec + at) decided, it becomes the identity the
 * record reports. Returns the identity's length. */
static __always_inline __u32 tyr_report_as_identity(struct tyr_scratch *s, struct tyr_checks *c, __u32 code, __u32 at,
						    __u32 identity_len, __u32 other_len)
{
	if (c->best_name != code)
		return identity_len;
	c->best_name = TYR_DECIDED_ON_IDENTITY;
	if (identity_len)
		bpf_probe_read_kernel(&s->rec[at & TYR_BASE_MASK], other_len & (TYR_PATH_MAX - 1),
				      &s->rec[(at + identity_len) & TYR_BASE_MASK]);
	return other_len;
}

static __always_inline bool tyr_reportable(const struct tyr_policy_decision *d)
{
	return d->verdict == TYR_VERDICT_DENY || d->verdict == TYR_VERDICT_ALERT;
}

/* The class a process is decided as: its agent type, else the class of
 * processes no agent claims. */
static __always_inline __u32 tyr_class_of(const struct tyr_agent_class *agent)
{
	return agent && agent->agent_type ? agent->agent_type : TYR_CLASS_UNKNOWN;
}

/* Whether a process must be refused what the kernel cannot decide for it:
 * an agent, under a policy that can deny. */
static __always_inline bool tyr_governed(const struct tyr_agent_class *agent, const struct tyr_policy_slot *meta)
{
	return meta && agent && agent->agent_type && (meta->flags & TYR_SLOT_DENIES);
}

/* An operation that could not be decided (no scratch): a governed process
 * is refused, with a record saying why; anyone else is let through. Both
 * are counted. Returns the hook's verdict. */
/* Fills a file record (header included) for a refusal that is not a rule's
 * decision: its path (path_len bytes) follows it; no other name. */
static __always_inline void tyr_refusal_record(struct tyr_file_fixed *rec, __u32 kind, __u32 op, __u32 path_len,
					       __u64 version, __u32 failsafe)
{
	tyr_fill_header(&rec->hdr, TYR_REC_FILE, kind);
	rec->hdr.size = sizeof(*rec) + path_len;
	rec->result = -TYR_EPERM;
	rec->open_flags = 0;
	rec->path_len = path_len;
	rec->name_len = 0;
	rec->source = TYR_FILE_SOURCE_LSM;
	rec->op = op;
	rec->decided_on = TYR_DECIDED_ON_PATH;
	rec->decision.policy_version = version;
	rec->decision.rule = 0;
	rec->decision.verdict = TYR_VERDICT_DENY;
	rec->identity_len = 0;
	rec->failsafe = failsafe;
	rec->reserved = 0;
	rec->reserved2 = 0;
}

/* The record of a refused open has room for the file's path. */
struct tyr_refused_open {
	struct tyr_file_fixed rec;
	char path[TYR_PATH_MAX];
};

static __always_inline int tyr_undecided_file(const struct tyr_policy_slot *meta, bool governed, __u32 kind,
					      __u32 op, struct file *file)
{
	if (!governed) {
		if (meta)
			tyr_count(&tyr_undecided, kind);
		return 0;
	}
	tyr_count(&tyr_refused, kind);
	struct tyr_refused_open *out = bpf_ringbuf_reserve(&tyr_events, sizeof(*out), 0);
	if (!out) {
		tyr_count_lost(kind);
		return -TYR_EPERM;
	}
	struct tyr_file_fixed *rec = &out->rec;
	__u32 path_len = 0;
	if (file) {
		long n = bpf_d_path(&file->f_path, out->path, TYR_PATH_MAX);
		path_len = n > 1 ? (n - 1) & (TYR_PATH_MAX - 1) : 0;
	}
	tyr_refusal_record(rec, kind, op, path_len, meta->version, TYR_FAILSAFE_NO_SCRATCH);
	bpf_ringbuf_submit(out, 0);
	return -TYR_EPERM;
}

/* Fills a file record's fixed part (its header is filled already). */
static __always_inline void tyr_file_record(struct tyr_file_fixed *rec, __s32 result, __u32 flags, __u32 op,
					    __u32 path_len, __u32 name_len, __u32 identity_len,
					    const struct tyr_checks *c)
{
	rec->result = result;
	rec->open_flags = flags;
	rec->path_len = path_len;
	rec->name_len = name_len;
	rec->source = TYR_FILE_SOURCE_LSM;
	rec->op = op;
	rec->decided_on = c->best_name;
	rec->decision = c->best;
	rec->identity_len = identity_len;
	rec->failsafe = c->failsafe;
	rec->reserved = 0;
	rec->reserved2 = 0;
}

/* File and exec decisions against the policy slot in force (see
 * tyr_records.h for the layout): a longest-prefix lookup of the path for
 * the process's agent class (else the base class), then the first of the
 * entry's candidates that matches. Globs run their automaton over the
 * path under bpf_loop(), 16 bytes per iteration, in a global function the
 * verifier checks once: a path of any length and a policy of any number of
 * globs cost one verified body. */
#pragma once

#include "policy.h"
#include "path.h"

TYR_POLICY_TRIE(tyr_path_slot0, struct tyr_path_key);
TYR_POLICY_TRIE(tyr_path_slot1, struct tyr_path_key);
TYR_POLICY_ARRAY(tyr_path_lists_slot0, struct tyr_path_candidates, TYR_POLICY_LISTS);
TYR_POLICY_ARRAY(tyr_path_lists_slot1, struct tyr_path_candidates, TYR_POLICY_LISTS);
TYR_POLICY_ARRAY(tyr_globs_slot0, struct tyr_glob, TYR_POLICY_GLOBS);
TYR_POLICY_ARRAY(tyr_globs_slot1, struct tyr_glob, TYR_POLICY_GLOBS);

/* How a path is decided. */
#define TYR_DECIDE_ON_TASK 1 /* the scratch is the task's */
#define TYR_DECIDE_SUBTREE 2 /* the path is a directory: a rule matching
			      * anything below it decides */

/* A glob run over the path at s->rec + base. */
struct tyr_glob_run {
	__u32 slot;
	__u32 glob;
	__u32 base;
	__u32 at;  /* next byte of the path */
	__u32 len; /* bytes of the path */
	__u32 on_task;
	__u64 state;
};

static __always_inline struct tyr_glob *tyr_glob_get(__u32 slot, __u32 *glob)
{
	return slot ? bpf_map_lookup_elem(&tyr_globs_slot1, glob) : bpf_map_lookup_elem(&tyr_globs_slot0, glob);
}

/* Path bytes run through the automaton per bpf_loop iteration: the
 * scratch and glob lookups and the callback are paid once per stride, not
 * once per byte. */
#define TYR_GLOB_STRIDE 16

/* Up to TYR_GLOB_STRIDE bytes through the automaton; stops the loop at the
 * end of the path or once no state is left. */
static long tyr_glob_step(__u64 index, void *ctx)
{
	struct tyr_glob_run *run = ctx;
	struct tyr_scratch *s = tyr_scratch_entry(run->on_task);
	struct tyr_glob *g = tyr_glob_get(run->slot, &run->glob);
	if (!s || !g) {
		run->state = 0;
		return 1;
	}
	__u64 state = run->state;
	__u32 at = run->at;
	__u32 len = run->len;
	__u32 base = run->base & TYR_BASE_MASK;
#pragma unroll
	for (__u32 k = 0; k < TYR_GLOB_STRIDE; k++) {
		if (at >= len || state == 0)
			break;
		__u8 c = s->rec[base + (at & TYR_PATH_MASK)];
		state = ((state << 1) & g->chars[c]) | (state & g->star);
		state |= (state & g->before_star) << 1;
		at++;
	}
	run->at = at;
	run->state = state;
	return at >= len || state == 0;
}

/* Whether glob `glob` matches the path (len bytes at s->rec + base) from
 * byte `start` on: 1 or 0; with `partial`, whether it matches the path
 * followed by more bytes (some path below a directory). A global function,
 * so the verifier checks it once, on its own, rather than again at every
 * candidate of every path decision that calls it. */
__noinline int tyr_glob_matches(__u32 slot_how, __u32 glob, __u32 base, __u32 start, __u32 len)
{
	/* Five arguments at most: the slot (bit 0) and how to decide
	 * (TYR_DECIDE_* from bit 1) share one. */
	__u32 slot = slot_how & 1;
	__u32 on_task = (slot_how >> 1) & TYR_DECIDE_ON_TASK;
	__u32 partial = (slot_how >> 1) & TYR_DECIDE_SUBTREE;
	struct tyr_glob *g = tyr_glob_get(slot, &glob);
	if (!g)
		return false;
	/* Below a directory, the literal start may end with the '/' that
	 * follows the directory's path: the glob is still to come. */
	if (partial && start == len + 1)
		return true;
	if (start > len)
		return false;
	__u64 accept = g->accept;
	struct tyr_glob_run run = {
		.slot = slot,
		.glob = glob,
		.base = base,
		.at = start,
		.len = len,
		.on_task = on_task,
		.state = 1 | ((1 & g->before_star) << 1),
	};
	bpf_loop(TYR_PATH_MAX / TYR_GLOB_STRIDE + 1, tyr_glob_step, &run, 0);
	if (run.at < len)
		return false;
	if (!partial)
		return (run.state & accept) != 0;
	/* The '/' after the directory, then any state left can still reach
	 * acceptance: every token of a glob matches something. */
	__u64 state = ((run.state << 1) & g->chars['/']) | (run.state & g->star);
	state |= (state & g->before_star) << 1;
	return state != 0;
}

/* What tyr_candidates_scan found: the candidate's verdict (bits 0-7) and
 * rule (bits 32-63). */
#define TYR_SCAN_HIT (1ULL << 16)
#define TYR_SCAN_COVERS (1ULL << 17) /* a directory: a prefix rule decides all below it */

static __always_inline __u32 tyr_verdict_rank(__u32 verdict)
{
	return verdict == TYR_VERDICT_DENY ? 2 : verdict == TYR_VERDICT_ALERT ? 1 : 0;
}

/* The candidates of list `list` against the path (len bytes at s->rec +
 * base; key_len bytes of it, with a directory's '/', in the trie key):
 * the first that matches, or for a directory decided as a whole
 * (TYR_DECIDE_SUBTREE) the strictest that matches something below it, up
 * to a prefix rule that decides all of it. 0: none matched. A global
 * function: the verifier checks the scan once. */
__noinline __u64 tyr_candidates_scan(__u32 slot_how, __u32 list, __u32 base, __u32 len, __u32 key_len)
{
	__u32 slot = slot_how & 1;
	bool subtree = (slot_how >> 1) & TYR_DECIDE_SUBTREE;
	struct tyr_path_candidates *l = slot ? bpf_map_lookup_elem(&tyr_path_lists_slot1, &list)
					     : bpf_map_lookup_elem(&tyr_path_lists_slot0, &list);
	if (!l)
		return 0;
	__u64 found = 0;
	for (int i = 0; i < TYR_POLICY_PATH_CANDIDATES; i++) {
		if (i >= l->count)
			break;
		const struct tyr_path_candidate *c = &l->list[i];
		bool hit = false;
		if (c->match == TYR_PATH_MATCH_PREFIX)
			hit = true;
		else if (c->match == TYR_PATH_MATCH_EXACT)
			hit = c->len == len;
		else if (c->match == TYR_PATH_MATCH_GLOB)
			hit = tyr_glob_matches(slot_how, c->glob, base, c->len, len);
		else if (c->match == TYR_PATH_MATCH_BELOW)
			hit = subtree && c->len == key_len;
		if (!hit)
			continue;
		__u64 this = ((__u64)c->rule << 32) | TYR_SCAN_HIT | c->verdict;
		if (!subtree)
			return this;
		if (!found || tyr_verdict_rank(c->verdict) > tyr_verdict_rank(found & 0xff))
			found = this;
		if (c->match == TYR_PATH_MATCH_PREFIX)
			return found | TYR_SCAN_COVERS;
	}
	return found;
}

/* Decides `action` (TYR_ACTION_*) for the path of `len` bytes at
 * s->rec + base, for agent class `class`, under `slot` (whose metadata is
 * `meta`): the caller reads the switch once, so every check of one
 * operation uses the same policy. A directory decided as a whole
 * (TYR_DECIDE_SUBTREE) gets the strictest decision of anything below it,
 * the default's included unless one rule decides all of it. */
static __always_inline void tyr_path_decide(struct tyr_scratch *s, __u32 how, __u32 slot,
					    const struct tyr_policy_slot *meta, __u32 base, __u32 len, __u32 class,
					    __u32 action, struct tyr_decision *out)
{
	tyr_decision_default(meta, out);

	struct tyr_path_key *key = &s->key;
	__u32 key_len = len < TYR_POLICY_PATH_KEY ? len : TYR_POLICY_PATH_KEY;
	bpf_probe_read_kernel(key->path, sizeof(key->path), &s->rec[base & TYR_BASE_MASK]);
	/* A directory's subtree: its path and the '/' below it. */
	if ((how & TYR_DECIDE_SUBTREE) && key_len < TYR_POLICY_PATH_KEY && len > 1) {
		/* Masked for the verifier (the barrier keeps the compiler from
		 * dropping a mask it knows to be redundant). */
		__u32 at = key_len;
		barrier_var(at);
		key->path[at & 0xff] = '/';
		key_len++;
	}
	key->prefixlen = 64 + key_len * 8;
	key->action = bpf_htonl(action);
	__u32 *index = NULL;
	for (int attempt = 0; attempt < 2 && !index; attempt++) {
		if (attempt == 1 && class == 0)
			break;
		key->class = bpf_htonl(attempt == 0 ? class : 0);
		index = slot ? bpf_map_lookup_elem(&tyr_path_slot1, key) : bpf_map_lookup_elem(&tyr_path_slot0, key);
	}
	if (!index)
		return;
	__u64 found = tyr_candidates_scan(slot | (how << 1), *index, base, len, key_len);
	if (!(found & TYR_SCAN_HIT))
		return;
	__u32 verdict = found & 0xff;
	bool covers = !(how & TYR_DECIDE_SUBTREE) || (found & TYR_SCAN_COVERS);
	/* Below a directory no rule decides entirely, the default may decide
	 * something: it stands where it is stricter. */
	if (!covers && tyr_verdict_rank(out->verdict) > tyr_verdict_rank(verdict))
		return;
	out->verdict = verdict;
	out->rule = found >> 32;
}

/* The stricter of two decisions: deny over alert over allow. */
static __always_inline void tyr_decision_stricter(struct tyr_decision *a, const struct tyr_decision *b)
{
	if (a->verdict == TYR_VERDICT_DENY)
		return;
	if (b->verdict == TYR_VERDICT_DENY || (b->verdict == TYR_VERDICT_ALERT && a->verdict != TYR_VERDICT_ALERT))
		*a = *b;
}

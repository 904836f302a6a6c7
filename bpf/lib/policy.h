/* The policy switch every enforcing program reads (see tyr_records.h for
 * the two slots and why): one read per decision, then that slot only. */
#pragma once

#include "common.h"

/* A policy slot's prefix trie (value: index of a candidate list). */
#define TYR_POLICY_TRIE(name, key_type)               \
	struct {                                      \
		__uint(type, BPF_MAP_TYPE_LPM_TRIE);  \
		__uint(max_entries, 16384);           \
		__uint(map_flags, BPF_F_NO_PREALLOC); \
		__type(key, key_type);                \
		__type(value, __u32);                 \
	} name SEC(".maps")

/* A policy slot's array of candidate lists or glob automata. */
#define TYR_POLICY_ARRAY(name, value_type, entries) \
	struct {                                    \
		__uint(type, BPF_MAP_TYPE_ARRAY);   \
		__uint(max_entries, entries);       \
		__type(key, __u32);                 \
		__type(value, value_type);          \
	} name SEC(".maps")

/* The outcome of a policy decision. */
struct tyr_decision {
	__u64 version;
	__u32 rule;
	__u32 verdict; /* 0 when no policy is loaded */
};

/* The slot in force and its metadata; NULL when no policy is loaded. */
static __always_inline struct tyr_policy_slot *tyr_policy_in_force(__u32 *slot)
{
	__u32 zero = 0;
	__u32 *active = bpf_map_lookup_elem(&tyr_policy_active, &zero);
	if (!active)
		return NULL;
	/* One read of the switch: everything after uses this slot. */
	__u32 switch_value = *(volatile __u32 *)active;
	if (switch_value == 0)
		return NULL;
	*slot = (switch_value - 1) & 1;
	return bpf_map_lookup_elem(&tyr_policy_slots, slot);
}

static __always_inline void tyr_decision_default(const struct tyr_policy_slot *meta, struct tyr_decision *out)
{
	out->version = meta->version;
	out->verdict = meta->default_verdict;
	out->rule = 0;
}

static __always_inline void tyr_decision_none(struct tyr_decision *out)
{
	out->version = 0;
	out->rule = 0;
	out->verdict = 0;
}

static __always_inline void tyr_decision_store(const struct tyr_decision *d, struct tyr_policy_decision *out)
{
	out->policy_version = d->version;
	out->rule = d->rule;
	out->verdict = d->verdict;
}

static __always_inline void tyr_count_undecided(__u32 kind)
{
	__u64 *count = bpf_map_lookup_elem(&tyr_undecided, &kind);
	if (count)
		*count += 1;
}

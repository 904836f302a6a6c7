/* Connect decisions against the active policy slot (see tyr_records.h for
 * the layout and why there are two slots). */
#pragma once

#include "policy.h"

TYR_POLICY_TRIE(tyr_net4_slot0, struct tyr_net_key4);
TYR_POLICY_TRIE(tyr_net4_slot1, struct tyr_net_key4);
TYR_POLICY_TRIE(tyr_net6_slot0, struct tyr_net_key6);
TYR_POLICY_TRIE(tyr_net6_slot1, struct tyr_net_key6);
TYR_POLICY_ARRAY(tyr_net_lists_slot0, struct tyr_net_candidates, TYR_POLICY_LISTS);
TYR_POLICY_ARRAY(tyr_net_lists_slot1, struct tyr_net_candidates, TYR_POLICY_LISTS);

static __always_inline bool tyr_port_in(const struct tyr_net_candidate *c, __u16 port)
{
	if (c->nports == 0)
		return true;
	for (int i = 0; i < TYR_POLICY_PORT_RANGES; i++) {
		if (i >= c->nports)
			break;
		if (port >= c->ports[i].first && port <= c->ports[i].last)
			return true;
	}
	return false;
}

/* First matching candidate of the list `index` in `slot`, or the default. */
static __always_inline void tyr_net_pick(const struct tyr_policy_slot *meta, __u32 slot, const __u32 *index,
					 __u16 port, struct tyr_decision *out)
{
	tyr_decision_default(meta, out);
	if (!index)
		return;
	struct tyr_net_candidates *list = slot ? bpf_map_lookup_elem(&tyr_net_lists_slot1, index)
					       : bpf_map_lookup_elem(&tyr_net_lists_slot0, index);
	if (!list)
		return;
	for (int i = 0; i < TYR_POLICY_CANDIDATES; i++) {
		if (i >= list->count)
			break;
		const struct tyr_net_candidate *c = &list->list[i];
		if (tyr_port_in(c, port)) {
			out->verdict = c->verdict;
			out->rule = c->rule;
			return;
		}
	}
}

/* Looks the destination up for the process's agent class, falling back to
 * the base policy (class 0) when the class has no overlay. */
static __always_inline void tyr_net_decide(__u32 class, bool v6, const __u8 *addr, __u16 port,
					   struct tyr_decision *out)
{
	tyr_decision_none(out);
	__u32 slot = 0;
	struct tyr_policy_slot *meta = tyr_policy_in_force(&slot);
	if (!meta)
		return;
	__u32 *index = NULL;
	for (int attempt = 0; attempt < 2 && !index; attempt++) {
		__u32 cls = attempt == 0 ? class : 0;
		if (attempt == 1 && class == 0)
			break;
		if (v6) {
			struct tyr_net_key6 key = { .prefixlen = 32 + 128, .class = bpf_htonl(cls) };
			__builtin_memcpy(key.addr, addr, 16);
			index = slot ? bpf_map_lookup_elem(&tyr_net6_slot1, &key) : bpf_map_lookup_elem(&tyr_net6_slot0, &key);
		} else {
			struct tyr_net_key4 key = { .prefixlen = 32 + 32, .class = bpf_htonl(cls) };
			__builtin_memcpy(key.addr, addr, 4);
			index = slot ? bpf_map_lookup_elem(&tyr_net4_slot1, &key) : bpf_map_lookup_elem(&tyr_net4_slot0, &key);
		}
	}
	tyr_net_pick(meta, slot, index, port, out);
}

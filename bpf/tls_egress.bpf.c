/* TLS ClientHellos at the socket layer: cgroup_skb/egress at the cgroup2
 * root sees every outbound packet of every process, whatever TLS library
 * built it (OpenSSL, BoringSSL linked into Bun or Node, rustls, Go). A
 * packet whose TCP payload starts a TLS handshake record carrying a
 * ClientHello is copied (bounded) to tyrd, which parses the SNI. The hook
 * can run outside the sender's context (retransmits, softirq), so the
 * process comes from the socket's owner recorded at connect, not from
 * "current"; hence its own scratch map, never shared with process-context
 * programs. Egress is never blocked here. */
#include "lib/common.h"

#define TYR_ETH_P_IP 0x0800
#define TYR_ETH_P_IPV6 0x86DD
#define TYR_IPPROTO_TCP 6
#define TYR_TLS_HANDSHAKE 0x16
#define TYR_TLS_CLIENT_HELLO 0x01

struct tyr_tls_scratch {
	__u8 rec[sizeof(struct tyr_tls_fixed) + TYR_HELLO_MAX];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct tyr_tls_scratch);
} tyr_tls_scratch_map SEC(".maps");

SEC("cgroup_skb/egress")
int tyr_tls_egress(struct __sk_buff *skb)
{
	struct tyr_config *cfg = tyr_config();
	if (!cfg || !(cfg->policy_unfiltered || tyr_kind_enabled(cfg, TYR_KIND_TLS)))
		return 1;

	__u8 remote[16] = {};
	__u16 family;
	__u32 l4_offset;
	if (skb->protocol == bpf_htons(TYR_ETH_P_IP)) {
		struct iphdr ip;
		if (bpf_skb_load_bytes(skb, 0, &ip, sizeof(ip)) || ip.protocol != TYR_IPPROTO_TCP)
			return 1;
		l4_offset = ip.ihl * 4;
		__builtin_memcpy(remote, &ip.daddr, 4);
		family = 2;
	} else if (skb->protocol == bpf_htons(TYR_ETH_P_IPV6)) {
		struct ipv6hdr ip6;
		if (bpf_skb_load_bytes(skb, 0, &ip6, sizeof(ip6)) || ip6.nexthdr != TYR_IPPROTO_TCP)
			return 1;
		l4_offset = sizeof(ip6);
		__builtin_memcpy(remote, &ip6.daddr, 16);
		family = 10;
	} else {
		return 1;
	}

	struct tcphdr tcp;
	if (bpf_skb_load_bytes(skb, l4_offset, &tcp, sizeof(tcp)))
		return 1;
	__u32 payload = l4_offset + tcp.doff * 4;
	if (payload + 6 > skb->len)
		return 1;
	__u8 head[6];
	if (bpf_skb_load_bytes(skb, payload, head, sizeof(head)))
		return 1;
	/* Handshake record, TLS major version 3, handshake type ClientHello. */
	if (head[0] != TYR_TLS_HANDSHAKE || head[1] != 0x03 || head[5] != TYR_TLS_CLIENT_HELLO)
		return 1;

	__u64 cookie = bpf_get_socket_cookie(skb);
	struct tyr_sock_owner *owner = bpf_map_lookup_elem(&tyr_sock_owners, &cookie);
	if (cfg->policy_unfiltered) {
		/* tyrd decides TLS policy from these records: every ClientHello counts. */
		if (owner && owner->pid == cfg->self_tgid)
			return 1;
	} else if (owner) {
		if (!tyr_process_selected(cfg, owner->pid, owner->comm))
			return 1;
	} else if (cfg->filter_pid || cfg->filter_comm) {
		return 1;
	}
	if (!tyr_ring_has_room(cfg)) {
		tyr_count_lost(TYR_KIND_TLS);
		return 1;
	}

	__u32 zero = 0;
	struct tyr_tls_scratch *s = bpf_map_lookup_elem(&tyr_tls_scratch_map, &zero);
	if (!s) {
		tyr_count_lost(TYR_KIND_TLS);
		return 1;
	}
	struct tyr_tls_fixed *rec = (struct tyr_tls_fixed *)s->rec;
	__builtin_memset(rec, 0, sizeof(*rec));
	rec->hdr.type = TYR_REC_TLS;
	rec->hdr.kind = TYR_KIND_TLS;
	rec->hdr.boot_ns = bpf_ktime_get_boot_ns();
	if (owner) {
		rec->hdr.pid = owner->pid;
		rec->hdr.tid = owner->tid;
		rec->hdr.ppid = owner->ppid;
		rec->hdr.uid = owner->uid;
		rec->hdr.gid = owner->gid;
		rec->hdr.agent = owner->agent;
		rec->hdr.agent_type = owner->agent_type;
		__builtin_memcpy(rec->hdr.comm, owner->comm, sizeof(rec->hdr.comm));
	} else {
		rec->hdr.flags |= TYR_F_OWNER_UNKNOWN;
	}
	rec->family = family;
	rec->remote_port = bpf_ntohs(tcp.dest);
	rec->cookie = cookie;
	__builtin_memcpy(rec->remote_addr, remote, sizeof(remote));

	__u32 len = skb->len - payload;
	if (len > TYR_HELLO_MAX) {
		len = TYR_HELLO_MAX;
		rec->hdr.flags |= TYR_F_TRUNCATED;
	}
	if (len < 6 || bpf_skb_load_bytes(skb, payload, s->rec + sizeof(*rec), len)) {
		tyr_count_lost(TYR_KIND_TLS);
		return 1;
	}
	rec->hello_len = len;
	rec->hdr.size = sizeof(*rec) + len;
	if (bpf_ringbuf_output(&tyr_events, s->rec, sizeof(*rec) + len, 0))
		tyr_count_lost(TYR_KIND_TLS);
	return 1;
}

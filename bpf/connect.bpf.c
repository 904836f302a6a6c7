/* Outbound connects, IPv4 and IPv6, from the cgroup sock_addr hooks attached
 * at the cgroup2 root: they run in the connecting process's context before
 * the connect is made, so policy can refuse it (ECONNREFUSED), for TCP and
 * connected UDP alike. Each connect also records which process owns the
 * socket, so tls_egress.bpf.c can attribute the ClientHello it sees. */
#include "lib/common.h"
#include "lib/net_policy.h"

#define TYR_ECONNREFUSED 111

#define TYR_AF_INET 2
#define TYR_AF_INET6 10

static __always_inline void tyr_remember_owner(struct bpf_sock_addr *ctx, const struct tyr_record_header *hdr)
{
	__u64 cookie = bpf_get_socket_cookie(ctx);
	struct tyr_sock_owner owner = {
		.pid = hdr->pid,
		.tid = hdr->tid,
		.ppid = hdr->ppid,
		.uid = hdr->uid,
		.gid = hdr->gid,
		.agent = hdr->agent,
		.agent_type = hdr->agent_type,
	};
	__builtin_memcpy(owner.comm, hdr->comm, sizeof(owner.comm));
	bpf_map_update_elem(&tyr_sock_owners, &cookie, &owner, BPF_ANY);
}

static __always_inline int tyr_connect(struct bpf_sock_addr *ctx, __u16 family)
{
	struct tyr_config *cfg = tyr_config();
	if (!cfg)
		return 1;

	struct tyr_connect_fixed rec = {};
	tyr_fill_header(&rec.hdr, TYR_REC_CONNECT, TYR_KIND_NET_CONNECT);
	if (tyr_kind_enabled(cfg, TYR_KIND_TLS))
		tyr_remember_owner(ctx, &rec.hdr);
	rec.hdr.size = sizeof(rec);
	rec.family = family;
	rec.port = bpf_ntohs(ctx->user_port);
	rec.sock_type = ctx->type;
	rec.protocol = ctx->protocol;
	rec.cookie = bpf_get_socket_cookie(ctx);
	if (family == TYR_AF_INET) {
		__u32 ip4 = ctx->user_ip4;
		__builtin_memcpy(rec.addr, &ip4, 4);
	} else {
		__u32 ip6[4];
		ip6[0] = ctx->user_ip6[0];
		ip6[1] = ctx->user_ip6[1];
		ip6[2] = ctx->user_ip6[2];
		ip6[3] = ctx->user_ip6[3];
		__builtin_memcpy(rec.addr, ip6, 16);
	}

	/* Policy first: the verdict stands whether or not the event is kept. */
	struct tyr_decision decision;
	__u32 class = rec.hdr.agent_type ? rec.hdr.agent_type : TYR_CLASS_UNKNOWN;
	tyr_net_decide(class, family == TYR_AF_INET6, rec.addr, rec.port, &decision);
	tyr_decision_store(&decision, &rec.decision);
	int allow = 1;
	if (decision.verdict == TYR_VERDICT_DENY) {
		bpf_set_retval(-TYR_ECONNREFUSED);
		allow = 0;
	}

	/* Decisions other than plain allow are always reported. */
	bool decided = decision.verdict == TYR_VERDICT_DENY || decision.verdict == TYR_VERDICT_ALERT;
	if (!tyr_kind_enabled(cfg, TYR_KIND_NET_CONNECT) && !decided)
		return allow;
	if (!decided && !tyr_process_selected(cfg, rec.hdr.pid, rec.hdr.comm))
		return allow;
	if (!decided && !tyr_ring_has_room(cfg)) {
		tyr_count_lost(TYR_KIND_NET_CONNECT);
		return allow;
	}
	if (bpf_ringbuf_output(&tyr_events, &rec, sizeof(rec), 0))
		tyr_count_lost(TYR_KIND_NET_CONNECT);
	return allow;
}

SEC("cgroup/connect4")
int tyr_connect4(struct bpf_sock_addr *ctx)
{
	return tyr_connect(ctx, TYR_AF_INET);
}

SEC("cgroup/connect6")
int tyr_connect6(struct bpf_sock_addr *ctx)
{
	return tyr_connect(ctx, TYR_AF_INET6);
}

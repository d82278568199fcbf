/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Reading the socket. Each read of kernel memory from a raw tracepoint is a
 * helper call (bpf_probe_read_kernel), and those calls were most of the
 * programs' cost. Fields that sit close together are read in one call: the
 * span from the lowest to the end of the highest, at offsets the loader
 * relocates for the running kernel, then picked out of the copy. A kernel
 * whose layout puts them further apart than the buffer gets one read per
 * field.
 */
#ifndef __TCPFSM_SPAN_BPF_H
#define __TCPFSM_SPAN_BPF_H

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include "tcp_state.bpf.h"
#include "maps.bpf.h"

#define F_OFF(type, f) ((__u32)bpf_core_field_offset(type, f))
#define F_END(type, f) (F_OFF(type, f) + (__u32)bpf_core_field_size(type, f))
#define MIN2(a, b) ((a) < (b) ? (a) : (b))
#define MAX2(a, b) ((a) > (b) ? (a) : (b))
/* The copy starts 8-aligned, so every field in it is naturally aligned. */
#define SPAN_LO(lo) ((lo) & ~7U)
#define AT(buf, lo, type, f) ((void *)(buf) + span_off(F_OFF(type, f) - SPAN_LO(lo)))

/* The field's place in the copy, as a number: the verifier allows adding
 * it to a stack or map value pointer, not a subtraction from one. */
static __always_inline __u32 span_off(__u32 off)
{
	barrier_var(off);
	return off;
}

/* The socket's identity, read once per event. */
struct tuple {
	__u8 saddr[16];
	__u8 daddr[16];
	__u32 netns;
	/* From inet_sport, not skc_num, at CLOSE: the kernel zeroes skc_num
	 * when it unhashes the socket, before the transition to CLOSE. */
	__u16 sport;
	__u16 dport;
	__u8 family;
	__u8 have_flags; /* sk_flags was read with the rest */
	__u8 state;      /* skc_state, read with the rest */
	__u16 num;       /* skc_num: the local port in host order while hashed, else 0 */
	__u64 sk_flags;  /* sk->__sk_common.skc_flags */
	__u64 net;       /* skc_net: struct net *, for read_netns() */
};

/* skc_flags, where the tuple's read did not bring them (have_flags). */
static __always_inline unsigned long read_sk_flags(struct sock *sk)
{
	return BPF_CORE_READ(sk, __sk_common.skc_flags);
}

/* The netns inode of the socket read_common() read: one more read, which
 * the programs spare where the connection's entry remembers it. */
static __always_inline __u32 read_netns(const struct tuple *t)
{
	/* Outside BPF_CORE_READ: the tuple is ours, not the kernel's. */
	struct net *net = (struct net *)t->net;

	return BPF_CORE_READ(net, ns.inum);
}

/* The local port from inet_sport, which the kernel keeps until the socket
 * is freed. */
static __always_inline __u16 read_sport(struct sock *sk)
{
	return __builtin_bswap16(BPF_CORE_READ((struct inet_sock *)sk, inet_sport));
}

/* The local port for a transition into newstate: skc_num while the socket
 * is hashed (read with the rest, no extra read), inet_sport at CLOSE. */
static __always_inline __u16 tuple_sport(struct sock *sk, const struct tuple *t, int newstate)
{
	if (newstate != TCP_CLOSE && t->num)
		return t->num;
	return read_sport(sk);
}

#define COMMON_SPAN 128 /* skc_daddr .. skc_flags: 104 bytes on 6.x */

/* Addresses, remote port, state, local port number and netns pointer: the
 * part full sockets and time-wait sockets share in their struct
 * sock_common, field by field. */
static __always_inline bool read_common_slow(struct sock *sk, struct tuple *t)
{
	__u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);

	t->dport = __builtin_bswap16(BPF_CORE_READ(sk, __sk_common.skc_dport));
	t->net = (__u64)BPF_CORE_READ(sk, __sk_common.skc_net.net);
	t->state = BPF_CORE_READ(sk, __sk_common.skc_state);
	t->num = BPF_CORE_READ(sk, __sk_common.skc_num);

	if (family == AF_INET6) {
		BPF_CORE_READ_INTO(&t->saddr, sk, __sk_common.skc_v6_rcv_saddr.in6_u.u6_addr8);
		BPF_CORE_READ_INTO(&t->daddr, sk, __sk_common.skc_v6_daddr.in6_u.u6_addr8);
		t->family = AF_INET6;
		return true;
	}
	if (family == AF_INET) {
		BPF_CORE_READ_INTO((__u32 *)t->saddr, sk, __sk_common.skc_rcv_saddr);
		BPF_CORE_READ_INTO((__u32 *)t->daddr, sk, __sk_common.skc_daddr);
		t->family = AF_INET;
		return true;
	}
	return false;
}

#define SC_OFF(f) F_OFF(struct sock, __sk_common.f)
#define SC_END(f) F_END(struct sock, __sk_common.f)

/* The same in one span read of sock_common, from skc_daddr to skc_flags;
 * the netns inode is left to read_netns(). */
static __always_inline bool read_common(struct sock *sk, struct tuple *t)
{
	__u32 lo = MIN2(MIN2(MIN2(SC_OFF(skc_daddr), SC_OFF(skc_rcv_saddr)),
			     MIN2(SC_OFF(skc_dport), SC_OFF(skc_family))),
			MIN2(MIN2(MIN2(SC_OFF(skc_net), SC_OFF(skc_flags)),
				  MIN2(SC_OFF(skc_v6_daddr), SC_OFF(skc_v6_rcv_saddr))),
			     MIN2(SC_OFF(skc_state), SC_OFF(skc_num))));
	__u32 hi = MAX2(MAX2(MAX2(SC_END(skc_daddr), SC_END(skc_rcv_saddr)),
			     MAX2(SC_END(skc_dport), SC_END(skc_family))),
			MAX2(MAX2(MAX2(SC_END(skc_net), SC_END(skc_flags)),
				  MAX2(SC_END(skc_v6_daddr), SC_END(skc_v6_rcv_saddr))),
			     MAX2(SC_END(skc_state), SC_END(skc_num))));
	__u8 buf[COMMON_SPAN] __attribute__((aligned(8)));
	__u16 family;

	if (hi - SPAN_LO(lo) > COMMON_SPAN)
		return read_common_slow(sk, t);
	if (bpf_probe_read_kernel(buf, hi - SPAN_LO(lo), (void *)sk + SPAN_LO(lo)))
		return false;
	family = *(__u16 *)AT(buf, lo, struct sock, __sk_common.skc_family);
	t->dport = __builtin_bswap16(*(__u16 *)AT(buf, lo, struct sock, __sk_common.skc_dport));
	t->net = *(__u64 *)AT(buf, lo, struct sock, __sk_common.skc_net);
	t->state = *(__u8 *)AT(buf, lo, struct sock, __sk_common.skc_state);
	t->num = *(__u16 *)AT(buf, lo, struct sock, __sk_common.skc_num);
	t->sk_flags = *(__u64 *)AT(buf, lo, struct sock, __sk_common.skc_flags);
	t->have_flags = 1;
	if (family == AF_INET6) {
		__builtin_memcpy(t->saddr, AT(buf, lo, struct sock, __sk_common.skc_v6_rcv_saddr),
				 16);
		__builtin_memcpy(t->daddr, AT(buf, lo, struct sock, __sk_common.skc_v6_daddr), 16);
		t->family = AF_INET6;
		return true;
	}
	if (family == AF_INET) {
		*(__u32 *)t->saddr = *(__u32 *)AT(buf, lo, struct sock, __sk_common.skc_rcv_saddr);
		*(__u32 *)t->daddr = *(__u32 *)AT(buf, lo, struct sock, __sk_common.skc_daddr);
		t->family = AF_INET;
		return true;
	}
	return false;
}

/* ::ffff:a.b.c.d on both ends is an IPv4 connection. */
static __always_inline void unmap_v4(struct tuple *t)
{
	__u32 *s = (__u32 *)t->saddr, *d = (__u32 *)t->daddr;

	if (t->family == AF_INET6 && (s[0] | s[1] | d[0] | d[1]) == 0 &&
	    s[2] == __builtin_bswap32(0xffff) && d[2] == __builtin_bswap32(0xffff)) {
		s[0] = s[3];
		d[0] = d[3];
		s[1] = s[2] = s[3] = 0;
		d[1] = d[2] = d[3] = 0;
		t->family = AF_INET;
	}
}

/* The whole tuple, netns included, where no connection entry remembers it
 * (a time-wait socket's end). */
static __always_inline bool read_common_unmapped(struct sock *sk, struct tuple *t)
{
	if (!read_common(sk, t))
		return false;
	t->netns = read_netns(t);
	unmap_v4(t);
	return true;
}

/*
 * sk_protocol and inet_sport, and with sk_err for a CLOSE (_err), in one
 * read where the slot holds them all. Two functions, not one with a flag:
 * each span's bounds must be constants where the picks are computed.
 */
#define FAR_LO MIN2(F_OFF(struct inet_sock, sk.sk_protocol), F_OFF(struct inet_sock, inet_sport))
#define FAR_HI MAX2(F_END(struct inet_sock, sk.sk_protocol), F_END(struct inet_sock, inet_sport))
#define FAR_ERR_LO MIN2(FAR_LO, F_OFF(struct inet_sock, sk.sk_err))
#define FAR_ERR_HI MAX2(FAR_HI, F_END(struct inet_sock, sk.sk_err))

static __always_inline void read_proto_sport(struct sock *sk, __u16 *proto, __u16 *sport,
					     struct scratch *buf)
{
	__u32 lo = FAR_LO, hi = FAR_HI;

	if (hi - SPAN_LO(lo) <= TP_SPAN &&
	    !bpf_probe_read_kernel(buf->b, hi - SPAN_LO(lo), (void *)sk + SPAN_LO(lo))) {
		*proto = *(__u16 *)AT(buf->b, lo, struct inet_sock, sk.sk_protocol);
		*sport = __builtin_bswap16(*(__u16 *)AT(buf->b, lo, struct inet_sock, inet_sport));
		return;
	}
	*proto = BPF_CORE_READ(sk, sk_protocol);
	*sport = read_sport(sk);
}

static __always_inline void read_proto_sport_err(struct sock *sk, __u16 *proto, __u16 *sport,
						 __u16 *err, struct scratch *buf)
{
	__u32 lo = FAR_ERR_LO, hi = FAR_ERR_HI;

	if (hi - SPAN_LO(lo) <= TP_SPAN &&
	    !bpf_probe_read_kernel(buf->b, hi - SPAN_LO(lo), (void *)sk + SPAN_LO(lo))) {
		*proto = *(__u16 *)AT(buf->b, lo, struct inet_sock, sk.sk_protocol);
		*sport = __builtin_bswap16(*(__u16 *)AT(buf->b, lo, struct inet_sock, inet_sport));
		*err = *(int *)AT(buf->b, lo, struct inet_sock, sk.sk_err);
		return;
	}
	*proto = BPF_CORE_READ(sk, sk_protocol);
	*sport = read_sport(sk);
	*err = BPF_CORE_READ(sk, sk_err);
}

/* The tcp_sock counters an event carries. */
struct counters {
	__u64 bytes_acked;
	__u64 bytes_received;
	__u32 srtt_us;
	__u32 total_retrans;
	__u32 segs_in;
	__u32 segs_out;
	__u32 snd_una;
	__u32 write_seq;
};

#define PICK_COUNTERS(buf, lo)                                                              \
	do {                                                                                \
		k->bytes_acked = *(__u64 *)AT(buf, lo, struct tcp_sock, bytes_acked);       \
		k->bytes_received = *(__u64 *)AT(buf, lo, struct tcp_sock, bytes_received); \
		k->srtt_us = *(__u32 *)AT(buf, lo, struct tcp_sock, srtt_us);               \
		k->segs_in = *(__u32 *)AT(buf, lo, struct tcp_sock, segs_in);               \
		k->segs_out = *(__u32 *)AT(buf, lo, struct tcp_sock, segs_out);             \
		k->snd_una = *(__u32 *)AT(buf, lo, struct tcp_sock, snd_una);               \
		k->write_seq = *(__u32 *)AT(buf, lo, struct tcp_sock, write_seq);           \
	} while (0)

/*
 * A read's cost grows with its length (the kernel copies it 8 bytes at a
 * time, each a fault-checked load): past this span one more call for a
 * far field is cheaper than copying what lies between. On 6.18 the
 * counters span 296 bytes and total_retrans lies 368 bytes beyond.
 */
#define COUNTERS_ONE_READ 384

/* Read the counters; snd_una and write_seq only matter when want_seq. One
 * read for all where they fit in COUNTERS_ONE_READ, two where
 * total_retrans is further from the others, one per field otherwise. */
static __always_inline void read_counters(struct sock *sk, struct counters *k, bool want_seq,
					  struct scratch *buf)
{
	struct tcp_sock *tp = (struct tcp_sock *)sk;
	__u32 lo =
		MIN2(MIN2(MIN2(F_OFF(struct tcp_sock, bytes_acked),
			       F_OFF(struct tcp_sock, bytes_received)),
			  MIN2(F_OFF(struct tcp_sock, srtt_us), F_OFF(struct tcp_sock, segs_in))),
		     MIN2(MIN2(F_OFF(struct tcp_sock, segs_out), F_OFF(struct tcp_sock, snd_una)),
			  F_OFF(struct tcp_sock, write_seq)));
	__u32 hi =
		MAX2(MAX2(MAX2(F_END(struct tcp_sock, bytes_acked),
			       F_END(struct tcp_sock, bytes_received)),
			  MAX2(F_END(struct tcp_sock, srtt_us), F_END(struct tcp_sock, segs_in))),
		     MAX2(MAX2(F_END(struct tcp_sock, segs_out), F_END(struct tcp_sock, snd_una)),
			  F_END(struct tcp_sock, write_seq)));
	__u32 alo = MIN2(lo, F_OFF(struct tcp_sock, total_retrans));
	__u32 ahi = MAX2(hi, F_END(struct tcp_sock, total_retrans));

	if (ahi - SPAN_LO(alo) <= COUNTERS_ONE_READ) {
		if (!bpf_probe_read_kernel(buf->b, ahi - SPAN_LO(alo), (void *)sk + SPAN_LO(alo))) {
			PICK_COUNTERS(buf->b, alo);
			k->total_retrans =
				*(__u32 *)AT(buf->b, alo, struct tcp_sock, total_retrans);
			return;
		}
	} else if (hi - SPAN_LO(lo) <= TP_SPAN &&
		   !bpf_probe_read_kernel(buf->b, hi - SPAN_LO(lo), (void *)sk + SPAN_LO(lo))) {
		PICK_COUNTERS(buf->b, lo);
		k->total_retrans = BPF_CORE_READ(tp, total_retrans);
		return;
	}
	k->bytes_acked = BPF_CORE_READ(tp, bytes_acked);
	k->bytes_received = BPF_CORE_READ(tp, bytes_received);
	k->srtt_us = BPF_CORE_READ(tp, srtt_us);
	k->segs_in = BPF_CORE_READ(tp, segs_in);
	k->segs_out = BPF_CORE_READ(tp, segs_out);
	k->snd_una = k->write_seq = 0;
	if (want_seq) {
		k->snd_una = BPF_CORE_READ(tp, snd_una);
		k->write_seq = BPF_CORE_READ(tp, write_seq);
	}
	k->total_retrans = BPF_CORE_READ(tp, total_retrans);
}

#endif /* __TCPFSM_SPAN_BPF_H */

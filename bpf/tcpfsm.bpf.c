// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * tcpfsm: every TCP state transition, with its owner, as one ring buffer
 * record. Attached to sock:inet_sock_set_state, either as a raw tracepoint
 * (preferred: no tracefs, cheaper dispatch) or as a classic tracepoint.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include "tcpfsm.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

enum tcp_state {
	TCP_ESTABLISHED = 1,
	TCP_SYN_SENT = 2,
	TCP_SYN_RECV = 3,
	TCP_FIN_WAIT1 = 4,
	TCP_FIN_WAIT2 = 5,
	TCP_TIME_WAIT = 6,
	TCP_CLOSE = 7,
	TCP_CLOSE_WAIT = 8,
	TCP_LAST_ACK = 9,
	TCP_LISTEN = 10,
	TCP_CLOSING = 11,
	TCP_NEW_SYN_RECV = 12,
	TCP_BOUND_INACTIVE = 13,
};

/*
 * Load-time configuration. The loader rewrites these constants before the
 * verifier sees the program, so a disabled filter costs one predictable
 * branch and filtered events never reach the ring buffer.
 */
volatile const __u32 filter_pid = 0;        /* owner tgid; 0: any */
volatile const __u32 filter_netns = 0;      /* netns inode; 0: any */
volatile const __u8 filter_family = 0;      /* AF_INET, AF_INET6; 0: any */
volatile const __u8 filter_lports = 0;      /* 1: only ports set in lport_bits */
volatile const __u8 filter_rports = 0;      /* 1: only ports set in rport_bits */
volatile const __u64 filter_cgroup = 0;     /* cgroup v2 id; 0: any */
volatile const __u32 filter_cgroup_level = 0; /* its depth below the root */
volatile const __u64 lport_bits[1024] = {}; /* one bit per port */
volatile const __u64 rport_bits[1024] = {};
/* Wake the reader only once this much data waits; it polls otherwise. */
volatile const __u32 wakeup_bytes = 0;

/* The connection's owner, captured in process context. */
struct owner {
	__u64 cgroup_id;
	__u32 pid;
	__u32 tid;
	__u8 comm[16];
	__u8 source;     /* enum owner_source */
	__u8 in_cgroup;  /* owner is inside filter_cgroup */
	__u8 _pad[6];
};

/* What tcpfsm remembers about one socket between two of its transitions. */
struct conn {
	__u64 id;
	__u64 since_ns;  /* when the current state was entered */
	struct owner owner;
	__u8 flags;      /* event flags every event of the connection carries: FLAG_PARTIAL */
	__u8 marks;      /* CONN_* below, for the programs only */
	__u8 pending_old, pending_new; /* a transition held back (CONN_PENDING) */
	__u8 _pad[4];
};

enum conn_marks {
	CONN_PENDING = 1 << 0,          /* a transition waits for the socket's addresses */
	CONN_ACTIVE = 1 << 1,           /* opened by connect() */
	CONN_TIME_WAIT = 1 << 2,        /* tcp_time_wait() is handing it to a time-wait socket */
	CONN_TW_FIN_WAIT2 = 1 << 3,     /* ... in the FIN_WAIT2 substate */
};

struct listener_key {
	__u32 netns;
	__u16 port;
	__u16 _pad;
};

struct listener {
	__u64 sk;
	struct owner owner;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536); /* the loader sets the real bound */
	__type(key, __u64);         /* struct sock * */
	__type(value, struct conn);
} conns SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, struct listener_key);
	__type(value, struct listener);
} listeners SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 22); /* the loader sets the real size */
} events SEC(".maps");

/* What one event takes in the ring buffer: its header and the event,
 * rounded up to 8 bytes. */
#define RECORD_SIZE ((8 + sizeof(struct event) + 7) & ~7)

/* Index 0: records that did not fit in the ring buffer. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} lost SEC(".maps");

/* Per-CPU sequence for connection ids: no atomics needed, because a
 * program never nests inside itself on one CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} id_seq SEC(".maps");

/*
 * The last connections CLOSE transitions ended, per CPU. close() and
 * SO_LINGER 0 change the state to CLOSE before they send the RST, and on
 * loopback the peer's own CLOSE runs in between, in softirq on the same
 * CPU: a few slots let the reset still find its connection.
 */
#define CLOSED_SLOTS 8

struct closed {
	__u64 sk;
	struct conn c;
};

struct closed_ring {
	__u32 next;
	__u32 _pad;
	struct closed slot[CLOSED_SLOTS];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct closed_ring);
} last_closed SEC(".maps");

/* Emit BTF for the types user space decodes, so bpf2go generates them. */
const struct event *unused_event __attribute__((unused));
const enum event_type *unused_event_type __attribute__((unused));
const enum owner_source *unused_owner_source __attribute__((unused));
const enum event_flags *unused_event_flags __attribute__((unused));
const enum tcp_state *unused_tcp_state __attribute__((unused));

#define CPU_BITS 12 /* ids stay unique for up to 4096 CPUs */

static __always_inline __u64 new_conn_id(void)
{
	__u32 zero = 0;
	__u64 *seq = bpf_map_lookup_elem(&id_seq, &zero);
	if (!seq)
		return 0;
	*seq += 1;
	return (*seq << CPU_BITS) | (bpf_get_smp_processor_id() & ((1 << CPU_BITS) - 1));
}

static __always_inline void count_lost(void)
{
	__u32 zero = 0;
	__u64 *n = bpf_map_lookup_elem(&lost, &zero);
	if (n)
		*n += 1;
}

/* The socket's identity, read once per event. */
struct tuple {
	__u8 saddr[16];
	__u8 daddr[16];
	__u32 netns;
	__u16 sport;
	__u16 dport;
	__u8 family;
	__u8 have_flags; /* sk_flags was read with the rest */
	__u64 sk_flags;  /* sk->__sk_common.skc_flags */
};

/*
 * Each read of kernel memory from a raw tracepoint is a helper call
 * (bpf_probe_read_kernel), and those calls were most of the programs' cost.
 * Fields that sit close together are read in one call: the span from the
 * lowest to the end of the highest, at offsets the loader relocates for the
 * running kernel, then picked out of the copy. A kernel whose layout puts
 * them further apart than the buffer gets one read per field, as before.
 */
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

#define HEAD_SPAN 32 /* skc_daddr .. skc_family: 18 bytes on 6.x */
#define MID_SPAN 64  /* skc_net .. skc_flags: 56 bytes on 6.x */

/* Addresses, remote port and netns: the part full sockets and time-wait
 * sockets share in their struct sock_common. */
static __always_inline bool read_common_slow(struct sock *sk, struct tuple *t)
{
	__u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);

	t->dport = __builtin_bswap16(BPF_CORE_READ(sk, __sk_common.skc_dport));
	t->netns = BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);

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

static __always_inline bool read_common(struct sock *sk, struct tuple *t)
{
	__u32 hlo = MIN2(MIN2(F_OFF(struct sock, __sk_common.skc_daddr), F_OFF(struct sock, __sk_common.skc_rcv_saddr)),
			 MIN2(F_OFF(struct sock, __sk_common.skc_dport), F_OFF(struct sock, __sk_common.skc_family)));
	__u32 hhi = MAX2(MAX2(F_END(struct sock, __sk_common.skc_daddr), F_END(struct sock, __sk_common.skc_rcv_saddr)),
			 MAX2(F_END(struct sock, __sk_common.skc_dport), F_END(struct sock, __sk_common.skc_family)));
	__u32 mlo = MIN2(MIN2(F_OFF(struct sock, __sk_common.skc_net), F_OFF(struct sock, __sk_common.skc_flags)),
			 MIN2(F_OFF(struct sock, __sk_common.skc_v6_daddr), F_OFF(struct sock, __sk_common.skc_v6_rcv_saddr)));
	__u32 mhi = MAX2(MAX2(F_END(struct sock, __sk_common.skc_net), F_END(struct sock, __sk_common.skc_flags)),
			 MAX2(F_END(struct sock, __sk_common.skc_v6_daddr), F_END(struct sock, __sk_common.skc_v6_rcv_saddr)));
	__u8 head[HEAD_SPAN] __attribute__((aligned(8))), mid[MID_SPAN] __attribute__((aligned(8)));
	__u16 family;

	if (hhi - SPAN_LO(hlo) > HEAD_SPAN || mhi - SPAN_LO(mlo) > MID_SPAN)
		return read_common_slow(sk, t);
	if (bpf_probe_read_kernel(head, hhi - SPAN_LO(hlo), (void *)sk + SPAN_LO(hlo)) ||
	    bpf_probe_read_kernel(mid, mhi - SPAN_LO(mlo), (void *)sk + SPAN_LO(mlo)))
		return false;
	family = *(__u16 *)AT(head, hlo, struct sock, __sk_common.skc_family);
	t->dport = __builtin_bswap16(*(__u16 *)AT(head, hlo, struct sock, __sk_common.skc_dport));
	t->netns = BPF_CORE_READ((struct net *)*(__u64 *)AT(mid, mlo, struct sock, __sk_common.skc_net), ns.inum);
	t->sk_flags = *(__u64 *)AT(mid, mlo, struct sock, __sk_common.skc_flags);
	t->have_flags = 1;
	if (family == AF_INET6) {
		__builtin_memcpy(t->saddr, AT(mid, mlo, struct sock, __sk_common.skc_v6_rcv_saddr), 16);
		__builtin_memcpy(t->daddr, AT(mid, mlo, struct sock, __sk_common.skc_v6_daddr), 16);
		t->family = AF_INET6;
		return true;
	}
	if (family == AF_INET) {
		*(__u32 *)t->saddr = *(__u32 *)AT(head, hlo, struct sock, __sk_common.skc_rcv_saddr);
		*(__u32 *)t->daddr = *(__u32 *)AT(head, hlo, struct sock, __sk_common.skc_daddr);
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

static __always_inline bool read_common_unmapped(struct sock *sk, struct tuple *t)
{
	if (!read_common(sk, t))
		return false;
	unmap_v4(t);
	return true;
}

static __always_inline bool read_tuple(struct sock *sk, struct tuple *t)
{
	/* inet_sport, not skc_num: the kernel zeroes skc_num when it unhashes
	 * the socket, before the transition to CLOSE. */
	t->sport = __builtin_bswap16(BPF_CORE_READ((struct inet_sock *)sk, inet_sport));
	return read_common_unmapped(sk, t);
}

static __always_inline bool port_set(volatile const __u64 *bits, __u16 port)
{
	return (bits[port >> 6] >> (port & 63)) & 1;
}

/*
 * Transitions the kernel makes before the socket has its final addresses:
 * connect() enters SYN_SENT before it picks the local port, and before
 * Linux 6.15 an accepted socket enters SYN_RECV before it gets the
 * connection's addresses (it still has its listener's). Their events wait
 * for the next transition, and for its addresses.
 */
static __always_inline bool incomplete(const struct tuple *t, int oldstate, int newstate)
{
	return (oldstate == TCP_CLOSE && newstate == TCP_SYN_SENT && t->sport == 0) ||
	       (oldstate == TCP_LISTEN && newstate == TCP_SYN_RECV && t->dport == 0);
}

/* Filters on what the socket is, not who owns it. An incomplete tuple is
 * only judged by its namespace; the rest is judged when it is complete. */
static __always_inline bool tuple_matches(const struct tuple *t, bool partial_tuple)
{
	if (filter_netns && t->netns != filter_netns)
		return false;
	if (partial_tuple)
		return true;
	if (filter_family && t->family != filter_family)
		return false;
	if (filter_rports && !port_set(rport_bits, t->dport))
		return false;
	if (filter_lports && !port_set(lport_bits, t->sport))
		return false;
	return true;
}

static __always_inline bool owner_matches(const struct owner *o)
{
	if (filter_pid && (o->source == OWNER_UNKNOWN || o->pid != filter_pid))
		return false;
	if (filter_cgroup && !o->in_cgroup)
		return false;
	return true;
}

static __always_inline void owner_from_task(struct owner *o)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();

	o->pid = pid_tgid >> 32;
	o->tid = (__u32)pid_tgid;
	o->cgroup_id = bpf_get_current_cgroup_id();
	bpf_get_current_comm(&o->comm, sizeof(o->comm));
	o->source = OWNER_TASK;
	o->in_cgroup = 0;
	if (filter_cgroup)
		o->in_cgroup = bpf_get_current_ancestor_cgroup_id(filter_cgroup_level) == filter_cgroup;
}

/*
 * Transitions only a syscall of the socket's owner makes: connect(),
 * listen(), and close() or shutdown(). Every other transition may run in
 * softirq on behalf of whichever task happens to be on the CPU.
 */
static __always_inline bool made_by_owner(int oldstate, int newstate)
{
	switch (newstate) {
	case TCP_SYN_SENT:
		return oldstate == TCP_CLOSE;
	case TCP_LISTEN:
		return oldstate == TCP_CLOSE;
	case TCP_FIN_WAIT1:
		return oldstate == TCP_ESTABLISHED || oldstate == TCP_SYN_RECV;
	case TCP_LAST_ACK:
		return oldstate == TCP_CLOSE_WAIT;
	case TCP_CLOSE:
		return oldstate == TCP_LISTEN;
	}
	return false;
}

static __always_inline bool starts_life(int oldstate, int newstate)
{
	return (oldstate == TCP_CLOSE && (newstate == TCP_SYN_SENT || newstate == TCP_LISTEN)) ||
	       (oldstate == TCP_LISTEN && newstate == TCP_SYN_RECV);
}

#define STATES_AFTER_OUR_FIN ((1 << TCP_FIN_WAIT1) | (1 << TCP_FIN_WAIT2) | (1 << TCP_CLOSING) | \
			      (1 << TCP_LAST_ACK) | (1 << TCP_TIME_WAIT))
#define STATES_AFTER_PEER_FIN ((1 << TCP_CLOSE_WAIT) | (1 << TCP_LAST_ACK) | (1 << TCP_CLOSING) | \
			       (1 << TCP_CLOSE))

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

#define TP_SPAN 1024 /* the counters: 668 bytes on 6.18 */

struct scratch {
	__u8 b[TP_SPAN];
};

/*
 * Per-CPU room for spans too large for the stack, one slot per program
 * (SLOT_*): a program never nests in itself on a CPU, but another one of
 * tcpfsm's can run in a softirq that interrupts it.
 */
enum scratch_slot {
	SLOT_STATE = 0,
	/* handle_other(): the event type minus one */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, struct scratch);
} scratch SEC(".maps");

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

/* Read the counters; snd_una and write_seq only matter when want_seq. One
 * read for all where they fit in the slot, two where total_retrans is far
 * from the others, one per field otherwise. */
static __always_inline void read_counters(struct sock *sk, struct counters *k, bool want_seq, __u32 slot)
{
	struct tcp_sock *tp = (struct tcp_sock *)sk;
	__u32 lo = MIN2(MIN2(MIN2(F_OFF(struct tcp_sock, bytes_acked), F_OFF(struct tcp_sock, bytes_received)),
			     MIN2(F_OFF(struct tcp_sock, srtt_us), F_OFF(struct tcp_sock, segs_in))),
			MIN2(MIN2(F_OFF(struct tcp_sock, segs_out), F_OFF(struct tcp_sock, snd_una)),
			     F_OFF(struct tcp_sock, write_seq)));
	__u32 hi = MAX2(MAX2(MAX2(F_END(struct tcp_sock, bytes_acked), F_END(struct tcp_sock, bytes_received)),
			     MAX2(F_END(struct tcp_sock, srtt_us), F_END(struct tcp_sock, segs_in))),
			MAX2(MAX2(F_END(struct tcp_sock, segs_out), F_END(struct tcp_sock, snd_una)),
			     F_END(struct tcp_sock, write_seq)));
	__u32 alo = MIN2(lo, F_OFF(struct tcp_sock, total_retrans));
	__u32 ahi = MAX2(hi, F_END(struct tcp_sock, total_retrans));
	struct scratch *buf = NULL;

	if (hi - SPAN_LO(lo) <= TP_SPAN)
		buf = bpf_map_lookup_elem(&scratch, &slot);
	if (buf && ahi - SPAN_LO(alo) <= TP_SPAN) {
		if (!bpf_probe_read_kernel(buf->b, ahi - SPAN_LO(alo), (void *)sk + SPAN_LO(alo))) {
			PICK_COUNTERS(buf->b, alo);
			k->total_retrans = *(__u32 *)AT(buf->b, alo, struct tcp_sock, total_retrans);
			return;
		}
	} else if (buf && !bpf_probe_read_kernel(buf->b, hi - SPAN_LO(lo), (void *)sk + SPAN_LO(lo))) {
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

/* sk_protocol and inet_sport, in one read where the slot holds both. */
static __always_inline void read_proto_sport(struct sock *sk, __u16 *proto, __u16 *sport, __u32 slot)
{
	__u32 lo = MIN2(F_OFF(struct inet_sock, sk.sk_protocol), F_OFF(struct inet_sock, inet_sport));
	__u32 hi = MAX2(F_END(struct inet_sock, sk.sk_protocol), F_END(struct inet_sock, inet_sport));
	struct scratch *buf = NULL;

	if (hi - SPAN_LO(lo) <= TP_SPAN)
		buf = bpf_map_lookup_elem(&scratch, &slot);
	if (buf && !bpf_probe_read_kernel(buf->b, hi - SPAN_LO(lo), (void *)sk + SPAN_LO(lo))) {
		*proto = *(__u16 *)AT(buf->b, lo, struct inet_sock, sk.sk_protocol);
		*sport = __builtin_bswap16(*(__u16 *)AT(buf->b, lo, struct inet_sock, inet_sport));
		return;
	}
	*proto = BPF_CORE_READ(sk, sk_protocol);
	*sport = __builtin_bswap16(BPF_CORE_READ((struct inet_sock *)sk, inet_sport));
}

/*
 * bytes_acked and bytes_received follow the sequence space, where SYN and
 * FIN take one number each. Say which of them the counters include, so
 * user space can report payload bytes exactly.
 */
static __always_inline __u8 control_flags(struct sock *sk, const struct tuple *t, const struct conn *c,
					  const struct counters *k, int oldstate, int newstate)
{
	__u8 flags = 0;

	/* The active opener's bytes_acked counts its SYN once the SYN-ACK
	 * arrived; an accepted socket starts after its SYN-ACK. */
	if ((c->marks & CONN_ACTIVE) && k->bytes_acked > 0)
		flags |= FLAG_SYN_ACKED;
	/* Once a FIN is queued the socket stays in these states until CLOSE;
	 * the FIN is acked when nothing after it is outstanding. Only the old
	 * state counts: close() changes the state before it queues the FIN. */
	if ((1 << oldstate) & STATES_AFTER_OUR_FIN) {
		if (k->snd_una == k->write_seq)
			flags |= FLAG_FIN_ACKED;
	}
	/* Only tcp_fin() sets SOCK_DONE, when the peer's FIN is taken in order. */
	if ((1 << newstate) & STATES_AFTER_PEER_FIN) {
		unsigned long sk_flags = t->have_flags ? t->sk_flags : BPF_CORE_READ(sk, __sk_common.skc_flags);
		if (sk_flags & (1UL << bpf_core_enum_value(enum sock_flags, SOCK_DONE)))
			flags |= FLAG_FIN_RECEIVED;
	}
	return flags;
}

/* Everything but the counters, the time and the transition. */
static __always_inline void fill_event(struct event *e, __u8 type, const struct tuple *t,
				       const struct conn *c, __u8 owner_source)
{
	e->type = type;
	e->conn_id = c->id;
	e->netns = t->netns;
	e->family = t->family;
	e->sport = t->sport;
	e->dport = t->dport;
	__builtin_memcpy(e->saddr, t->saddr, sizeof(e->saddr));
	__builtin_memcpy(e->daddr, t->daddr, sizeof(e->daddr));
	e->pid = c->owner.pid;
	e->tid = c->owner.tid;
	e->cgroup_id = c->owner.cgroup_id;
	__builtin_memcpy(e->comm, c->owner.comm, sizeof(e->comm));
	e->owner = owner_source;
	e->flags = c->flags & FLAG_PARTIAL;
	e->sk_err = 0;
}

static __always_inline void fill_counters(struct event *e, const struct counters *k)
{
	e->bytes_acked = k->bytes_acked;
	e->bytes_received = k->bytes_received;
	e->srtt_us = k->srtt_us >> 3;
	e->total_retrans = k->total_retrans;
	e->segs_in = k->segs_in;
	e->segs_out = k->segs_out;
}

/*
 * The reader polls; the kernel wakes it early only when data piles up:
 * when this record takes the unread data past wakeup_bytes. A plain
 * submit wakes only a reader that has read everything, never the case past
 * the threshold, so the wakeup is forced; and only near the crossing (a
 * few records, as other CPUs reserve concurrently), not for every record
 * while the reader catches up.
 */
static __always_inline __u64 submit_flags(void)
{
	if (!wakeup_bytes)
		return 0;
	__u64 avail = bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA);
	if (avail >= wakeup_bytes && avail < wakeup_bytes + 4 * RECORD_SIZE)
		return BPF_RB_FORCE_WAKEUP;
	return BPF_RB_NO_WAKEUP;
}

static __always_inline void emit(struct sock *sk, const struct tuple *t, const struct conn *c,
				 __u8 owner_source, __u64 ts, __u64 delta, int oldstate,
				 int newstate)
{
	struct counters k;
	struct event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count_lost();
		return;
	}
	read_counters(sk, &k, (1 << oldstate) & STATES_AFTER_OUR_FIN, SLOT_STATE);
	fill_event(e, EVENT_STATE, t, c, owner_source);
	fill_counters(e, &k);
	e->flags |= control_flags(sk, t, c, &k, oldstate, newstate);
	if (newstate == TCP_CLOSE) {
		/* Set before the kernel closes on a reset or a timeout. */
		e->sk_err = BPF_CORE_READ(sk, sk_err);
		if (c->marks & CONN_TIME_WAIT)
			e->flags |= FLAG_TIME_WAIT;
		if (c->marks & CONN_TW_FIN_WAIT2)
			e->flags |= FLAG_TW_FIN_WAIT2;
	}
	e->ts_ns = ts;
	e->delta_ns = delta;
	e->oldstate = oldstate;
	e->newstate = newstate;
	bpf_ringbuf_submit(e, submit_flags());
}

/* A held-back transition: the addresses are known now, the time is kept. */
static __always_inline void emit_deferred(struct sock *sk, const struct tuple *t,
					  const struct conn *c)
{
	struct event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count_lost();
		return;
	}
	fill_event(e, EVENT_STATE, t, c, c->owner.source);
	/* Nothing had been sent or received in the state's first instant. */
	e->bytes_acked = e->bytes_received = 0;
	e->srtt_us = e->total_retrans = e->segs_in = e->segs_out = 0;
	e->flags |= FLAG_DEFERRED;
	e->ts_ns = c->since_ns;
	e->delta_ns = 0;
	e->oldstate = c->pending_old;
	e->newstate = c->pending_new;
	bpf_ringbuf_submit(e, submit_flags());
}

static __always_inline void track_listener(struct sock *sk, const struct tuple *t,
					   int oldstate, int newstate, const struct owner *o)
{
	struct listener_key key = { .netns = t->netns, .port = t->sport };
	__u64 skp = (__u64)sk;

	if (newstate == TCP_LISTEN) {
		struct listener l = { .sk = skp, .owner = *o };
		bpf_map_update_elem(&listeners, &key, &l, BPF_ANY);
	} else if (oldstate == TCP_LISTEN && newstate == TCP_CLOSE) {
		struct listener *l = bpf_map_lookup_elem(&listeners, &key);
		if (l && l->sk == skp)
			bpf_map_delete_elem(&listeners, &key);
	}
}

static __always_inline int handle(struct sock *sk, int oldstate, int newstate)
{
	__u64 now = bpf_ktime_get_ns();
	__u64 skp = (__u64)sk;
	struct tuple t = {};
	struct owner task = {};
	bool by_owner = made_by_owner(oldstate, newstate);

	__u16 proto;

	/* inet_sport, not skc_num: the kernel zeroes skc_num when it unhashes
	 * the socket, before the transition to CLOSE. */
	read_proto_sport(sk, &proto, &t.sport, SLOT_STATE);
	if (proto != IPPROTO_TCP)
		return 0; /* SCTP and MPTCP sockets use the same tracepoint */
	if (!read_common_unmapped(sk, &t))
		return 0;
	if (by_owner)
		owner_from_task(&task);

	/* Listeners are remembered whatever the filters: an accepted socket
	 * that passes them inherits its listener's owner. */
	if (newstate == TCP_LISTEN || (oldstate == TCP_LISTEN && newstate == TCP_CLOSE))
		track_listener(sk, &t, oldstate, newstate, &task);

	bool held = incomplete(&t, oldstate, newstate);
	if (!tuple_matches(&t, held)) {
		/* Only a transition waiting for its addresses can have been kept. */
		if (oldstate == TCP_SYN_SENT || oldstate == TCP_SYN_RECV)
			bpf_map_delete_elem(&conns, &skp);
		return 0;
	}

	struct conn *c = bpf_map_lookup_elem(&conns, &skp);
	struct conn fresh = {};
	if (!c) {
		fresh.id = new_conn_id();
		fresh.since_ns = now;
		if (!starts_life(oldstate, newstate))
			fresh.flags = FLAG_PARTIAL;
		if (oldstate == TCP_CLOSE && newstate == TCP_SYN_SENT)
			fresh.marks |= CONN_ACTIVE;
		if (by_owner) {
			fresh.owner = task;
		} else if (oldstate == TCP_LISTEN && newstate == TCP_SYN_RECV) {
			struct listener_key key = { .netns = t.netns, .port = t.sport };
			struct listener *l = bpf_map_lookup_elem(&listeners, &key);
			if (l && l->owner.source != OWNER_UNKNOWN) {
				fresh.owner = l->owner;
				fresh.owner.source = OWNER_LISTENER;
			}
		}
		c = &fresh;
	} else if (by_owner && c->owner.source != OWNER_TASK) {
		/* The accepting process (a pre-forked worker, say) knows
		 * better than the listener's, or than nobody. */
		c->owner = task;
	}

	__u64 delta = c == &fresh ? 0 : now - c->since_ns;
	struct owner *o = &c->owner;
	bool pass = owner_matches(o);

	if (c->marks & CONN_PENDING) {
		c->marks &= ~CONN_PENDING;
		if (pass)
			emit_deferred(sk, &t, c);
	}

	if (held) {
		c->marks |= CONN_PENDING;
		c->pending_old = oldstate;
		c->pending_new = newstate;
	} else if (pass) {
		__u8 source = o->source;
		/* Later events carry what an earlier syscall recorded. */
		if (source == OWNER_TASK && !by_owner)
			source = OWNER_CARRIED;
		emit(sk, &t, c, source, now, delta, oldstate, newstate);
	}

	if (newstate == TCP_CLOSE) {
		__u32 zero = 0;
		struct closed_ring *ring = bpf_map_lookup_elem(&last_closed, &zero);
		if (ring && pass) {
			struct closed *slot = &ring->slot[ring->next & (CLOSED_SLOTS - 1)];
			slot->sk = skp;
			slot->c = *c;
			ring->next++;
		}
		if (c != &fresh)
			bpf_map_delete_elem(&conns, &skp);
		return 0;
	}
	c->since_ns = now;
	if (c == &fresh)
		bpf_map_update_elem(&conns, &skp, &fresh, BPF_ANY);
	return 0;
}

/*
 * Resets and SYN retransmits of tracked sockets: one event each, with the
 * connection's id and owner. Untracked sockets (filtered out, or sk NULL
 * for a reset sent without a socket) are ignored.
 */
static __always_inline int handle_other(struct sock *sk, __u8 type)
{
	__u64 skp = (__u64)sk;
	__u32 zero = 0;
	struct tuple t = {};

	if (!sk)
		return 0;
	int state = BPF_CORE_READ(sk, __sk_common.skc_state);
	if (type == EVENT_SYN_RETRANSMIT && state != TCP_SYN_SENT)
		return 0; /* only the handshake's retransmits are events */

	struct conn *c = bpf_map_lookup_elem(&conns, &skp);
	if (!c && type == EVENT_RESET_SENT && state == TCP_CLOSE) {
		struct closed_ring *ring = bpf_map_lookup_elem(&last_closed, &zero);
		if (ring) {
			for (int i = 0; i < CLOSED_SLOTS; i++) {
				if (ring->slot[i].sk == skp) {
					c = &ring->slot[i].c;
					ring->slot[i].sk = 0;
					break;
				}
			}
		}
	}
	if (!c)
		return 0;
	if (!read_tuple(sk, &t))
		return 0;
	if (!tuple_matches(&t, false)) {
		/* A connect that waited for its port, and the port does not pass. */
		if (state == TCP_SYN_SENT)
			bpf_map_delete_elem(&conns, &skp);
		return 0;
	}
	if (!owner_matches(&c->owner))
		return 0;
	if (c->marks & CONN_PENDING) {
		/* The SYN went out, so connect() has picked the port. */
		c->marks &= ~CONN_PENDING;
		emit_deferred(sk, &t, c);
	}

	struct event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count_lost();
		return 0;
	}
	__u8 source = c->owner.source == OWNER_TASK ? OWNER_CARRIED : c->owner.source;
	struct counters k;
	read_counters(sk, &k, false, type - 1);
	fill_event(e, type, &t, c, source);
	fill_counters(e, &k);
	e->ts_ns = bpf_ktime_get_ns();
	e->delta_ns = 0;
	e->oldstate = state;
	e->newstate = state;
	bpf_ringbuf_submit(e, submit_flags());
	return 0;
}

SEC("raw_tracepoint/tcp_send_reset")
int raw_tcp_send_reset(struct bpf_raw_tracepoint_args *ctx)
{
	/* TP_PROTO(const struct sock *sk, const struct sk_buff *skb[, reason]) */
	return handle_other((struct sock *)ctx->args[0], EVENT_RESET_SENT);
}

SEC("raw_tracepoint/tcp_receive_reset")
int raw_tcp_receive_reset(struct bpf_raw_tracepoint_args *ctx)
{
	/* TP_PROTO(struct sock *sk) */
	return handle_other((struct sock *)ctx->args[0], EVENT_RESET_RECEIVED);
}

SEC("raw_tracepoint/tcp_retransmit_skb")
int raw_tcp_retransmit_skb(struct bpf_raw_tracepoint_args *ctx)
{
	/* TP_PROTO(const struct sock *sk, const struct sk_buff *skb[, err]) */
	return handle_other((struct sock *)ctx->args[0], EVENT_SYN_RETRANSMIT);
}

/*
 * Optional, where the kernel has BPF trampolines: the loader tries these
 * and falls back to reconstructing TIME_WAIT from the transitions and
 * sock_diag when the kernel refuses them.
 */

/* tcp_time_wait(struct sock *sk, int state, int timeo) runs just before the
 * connection's CLOSE: mark it, so that CLOSE says TIME_WAIT for sure. */
SEC("fentry/tcp_time_wait")
int fentry_tcp_time_wait(__u64 *ctx)
{
	__u64 skp = ctx[0];
	int state = (int)ctx[1];
	struct conn *c = bpf_map_lookup_elem(&conns, &skp);

	if (c) {
		c->marks |= CONN_TIME_WAIT;
		if (state == TCP_FIN_WAIT2)
			c->marks |= CONN_TW_FIN_WAIT2;
	}
	return 0;
}

/* inet_twsk_kill(struct inet_timewait_sock *tw): the end of TIME_WAIT,
 * by its timer or early (reuse, RST). Matched to its connection by tuple
 * in user space. */
SEC("fentry/inet_twsk_kill")
int fentry_inet_twsk_kill(__u64 *ctx)
{
	struct inet_timewait_sock *tw = (struct inet_timewait_sock *)ctx[0];
	struct tuple t = {};

	t.sport = __builtin_bswap16(BPF_CORE_READ(tw, tw_sport));
	if (!read_common_unmapped((struct sock *)tw, &t) || !tuple_matches(&t, false))
		return 0;
	struct event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count_lost();
		return 0;
	}
	__builtin_memset(e, 0, sizeof(*e));
	e->type = EVENT_TIME_WAIT_END;
	e->ts_ns = bpf_ktime_get_ns();
	e->netns = t.netns;
	e->family = t.family;
	e->sport = t.sport;
	e->dport = t.dport;
	__builtin_memcpy(e->saddr, t.saddr, sizeof(e->saddr));
	__builtin_memcpy(e->daddr, t.daddr, sizeof(e->daddr));
	e->oldstate = BPF_CORE_READ(tw, tw_substate);
	e->newstate = TCP_CLOSE;
	bpf_ringbuf_submit(e, submit_flags());
	return 0;
}

/* inet_csk_accept() returns the accepted socket in the accepting task:
 * the exact owner, earlier than its close() would tell. */
SEC("fexit/inet_csk_accept")
int fexit_inet_csk_accept(__u64 *ctx)
{
	__u64 ret = 0;

	if (bpf_get_func_ret(ctx, &ret) < 0 || !ret)
		return 0;
	struct conn *c = bpf_map_lookup_elem(&conns, &ret);
	if (c && c->owner.source != OWNER_TASK)
		owner_from_task(&c->owner);
	return 0;
}

SEC("raw_tracepoint/inet_sock_set_state")
int raw_inet_sock_set_state(struct bpf_raw_tracepoint_args *ctx)
{
	/* TP_PROTO(const struct sock *sk, const int oldstate, const int newstate) */
	return handle((struct sock *)ctx->args[0], (int)ctx->args[1], (int)ctx->args[2]);
}

SEC("tracepoint/sock/inet_sock_set_state")
int tp_inet_sock_set_state(struct trace_event_raw_inet_sock_set_state *ctx)
{
	return handle((struct sock *)ctx->skaddr, ctx->oldstate, ctx->newstate);
}

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
	__u8 flags;      /* FLAG_PARTIAL, plus CONN_PENDING_SYN_SENT */
	__u8 _pad[7];
};

/* Internal to struct conn: a CLOSE->SYN_SENT event waits for its port. */
#define CONN_PENDING_SYN_SENT (1 << 7)
/* Internal to struct conn: it was opened by connect(). */
#define CONN_ACTIVE (1 << 6)

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
};

static __always_inline bool read_tuple(struct sock *sk, struct tuple *t)
{
	__u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);

	/* inet_sport, not skc_num: the kernel zeroes skc_num when it unhashes
	 * the socket, before the transition to CLOSE. */
	t->sport = __builtin_bswap16(BPF_CORE_READ((struct inet_sock *)sk, inet_sport));
	t->dport = __builtin_bswap16(BPF_CORE_READ(sk, __sk_common.skc_dport));
	t->netns = BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);

	if (family == AF_INET6) {
		BPF_CORE_READ_INTO(&t->saddr, sk, __sk_common.skc_v6_rcv_saddr.in6_u.u6_addr8);
		BPF_CORE_READ_INTO(&t->daddr, sk, __sk_common.skc_v6_daddr.in6_u.u6_addr8);
		/* ::ffff:a.b.c.d on both ends is an IPv4 connection. */
		__u32 *s = (__u32 *)t->saddr, *d = (__u32 *)t->daddr;
		if ((s[0] | s[1] | d[0] | d[1]) == 0 &&
		    s[2] == __builtin_bswap32(0xffff) && d[2] == __builtin_bswap32(0xffff)) {
			s[0] = s[3];
			d[0] = d[3];
			s[1] = s[2] = s[3] = 0;
			d[1] = d[2] = d[3] = 0;
			t->family = AF_INET;
		} else {
			t->family = AF_INET6;
		}
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

static __always_inline bool port_set(volatile const __u64 *bits, __u16 port)
{
	return (bits[port >> 6] >> (port & 63)) & 1;
}

/* Filters on what the socket is, not who owns it. A local port of 0 is
 * only let through while connect() has not picked it yet. */
static __always_inline bool tuple_matches(const struct tuple *t, int newstate)
{
	if (filter_netns && t->netns != filter_netns)
		return false;
	if (filter_family && t->family != filter_family)
		return false;
	if (filter_rports && !port_set(rport_bits, t->dport))
		return false;
	if (filter_lports && !(t->sport == 0 && newstate == TCP_SYN_SENT) &&
	    !port_set(lport_bits, t->sport))
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

/*
 * bytes_acked and bytes_received follow the sequence space, where SYN and
 * FIN take one number each. Say which of them the counters include, so
 * user space can report payload bytes exactly.
 */
static __always_inline __u8 control_flags(struct sock *sk, const struct conn *c, int oldstate,
					  int newstate, __u64 bytes_acked)
{
	struct tcp_sock *tp = (struct tcp_sock *)sk;
	__u8 flags = 0;

	/* The active opener's bytes_acked counts its SYN once the SYN-ACK
	 * arrived; an accepted socket starts after its SYN-ACK. */
	if ((c->flags & CONN_ACTIVE) && bytes_acked > 0)
		flags |= FLAG_SYN_ACKED;
	/* Once a FIN is queued the socket stays in these states until CLOSE;
	 * the FIN is acked when nothing after it is outstanding. Only the old
	 * state counts: close() changes the state before it queues the FIN. */
	if ((1 << oldstate) & STATES_AFTER_OUR_FIN) {
		if (BPF_CORE_READ(tp, snd_una) == BPF_CORE_READ(tp, write_seq))
			flags |= FLAG_FIN_ACKED;
	}
	/* Only tcp_fin() sets SOCK_DONE, when the peer's FIN is taken in order. */
	if ((1 << newstate) & STATES_AFTER_PEER_FIN) {
		unsigned long sk_flags = BPF_CORE_READ(sk, __sk_common.skc_flags);
		if (sk_flags & (1UL << bpf_core_enum_value(enum sock_flags, SOCK_DONE)))
			flags |= FLAG_FIN_RECEIVED;
	}
	return flags;
}

static __always_inline void fill_event(struct event *e, struct sock *sk, const struct tuple *t,
				       const struct conn *c, __u8 owner_source)
{
	struct tcp_sock *tp = (struct tcp_sock *)sk;

	e->type = EVENT_STATE;
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
	e->bytes_acked = BPF_CORE_READ(tp, bytes_acked);
	e->bytes_received = BPF_CORE_READ(tp, bytes_received);
	e->srtt_us = BPF_CORE_READ(tp, srtt_us) >> 3;
	e->total_retrans = BPF_CORE_READ(tp, total_retrans);
	e->segs_in = BPF_CORE_READ(tp, segs_in);
	e->segs_out = BPF_CORE_READ(tp, segs_out);
	e->_pad[0] = e->_pad[1] = 0;
}

static __always_inline __u64 submit_flags(void)
{
	if (wakeup_bytes && bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) < wakeup_bytes)
		return BPF_RB_NO_WAKEUP;
	return 0;
}

static __always_inline void emit(struct sock *sk, const struct tuple *t, const struct conn *c,
				 __u8 owner_source, __u64 ts, __u64 delta, int oldstate,
				 int newstate)
{
	struct event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count_lost();
		return;
	}
	fill_event(e, sk, t, c, owner_source);
	e->flags |= control_flags(sk, c, oldstate, newstate, e->bytes_acked);
	e->ts_ns = ts;
	e->delta_ns = delta;
	e->oldstate = oldstate;
	e->newstate = newstate;
	bpf_ringbuf_submit(e, submit_flags());
}

/* The deferred CLOSE->SYN_SENT: the port is known now, the time is kept. */
static __always_inline void emit_syn_sent(struct sock *sk, const struct tuple *t,
					  const struct conn *c)
{
	struct event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count_lost();
		return;
	}
	fill_event(e, sk, t, c, c->owner.source);
	/* Nothing had been sent or received in SYN_SENT's first instant. */
	e->bytes_acked = e->bytes_received = 0;
	e->srtt_us = e->total_retrans = e->segs_in = e->segs_out = 0;
	e->flags |= FLAG_DEFERRED;
	e->ts_ns = c->since_ns;
	e->delta_ns = 0;
	e->oldstate = TCP_CLOSE;
	e->newstate = TCP_SYN_SENT;
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

	if (BPF_CORE_READ(sk, sk_protocol) != IPPROTO_TCP)
		return 0; /* SCTP and MPTCP sockets use the same tracepoint */
	if (!read_tuple(sk, &t))
		return 0;
	if (by_owner)
		owner_from_task(&task);

	/* Listeners are remembered whatever the filters: an accepted socket
	 * that passes them inherits its listener's owner. */
	if (newstate == TCP_LISTEN || (oldstate == TCP_LISTEN && newstate == TCP_CLOSE))
		track_listener(sk, &t, oldstate, newstate, &task);

	if (!tuple_matches(&t, newstate)) {
		/* Only a connect waiting for its port can have been kept. */
		if (oldstate == TCP_SYN_SENT)
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
			fresh.flags |= CONN_ACTIVE;
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

	if (c->flags & CONN_PENDING_SYN_SENT) {
		c->flags &= ~CONN_PENDING_SYN_SENT;
		if (pass)
			emit_syn_sent(sk, &t, c);
	}

	if (newstate == TCP_SYN_SENT && t.sport == 0) {
		/* connect() sets SYN_SENT before it picks the local port. */
		c->flags |= CONN_PENDING_SYN_SENT;
	} else if (pass) {
		__u8 source = o->source;
		/* Later events carry what an earlier syscall recorded. */
		if (source == OWNER_TASK && !by_owner)
			source = OWNER_CARRIED;
		emit(sk, &t, c, source, now, delta, oldstate, newstate);
	}

	if (newstate == TCP_CLOSE) {
		if (c != &fresh)
			bpf_map_delete_elem(&conns, &skp);
		return 0;
	}
	c->since_ns = now;
	if (c == &fresh)
		bpf_map_update_elem(&conns, &skp, &fresh, BPF_ANY);
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

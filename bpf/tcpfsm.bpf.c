// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * tcpfsm: every TCP state transition, with its owner, as one ring buffer
 * record. Attached to sock:inet_sock_set_state, either as a raw tracepoint
 * (preferred: no tracefs, cheaper dispatch) or as a classic tracepoint.
 *
 * The programs and the per-transition logic are here; the headers hold
 * the kernel's TCP states (tcp_state.bpf.h), the maps (maps.bpf.h),
 * reading the socket (span.bpf.h), the filters (filter.bpf.h), owners and
 * listeners (owner.bpf.h), the events (emit.bpf.h) and the state
 * program's nested instance (nest.bpf.h). Nothing is
 * arch-specific: context arguments are read as u64 arrays and kernel
 * structs by CO-RE, so each arch's object (bpf2go -target) compiles from
 * the same code.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include "tcpfsm.h"
#include "tcp_state.bpf.h"
#include "maps.bpf.h"
#include "span.bpf.h"
#include "filter.bpf.h"
#include "owner.bpf.h"
#include "emit.bpf.h"
#include "nest.bpf.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Emit BTF for the types user space decodes, so bpf2go generates them. */
const struct event *unused_event __attribute__((unused));
const enum event_type *unused_event_type __attribute__((unused));
const enum owner_source *unused_owner_source __attribute__((unused));
const enum event_flags *unused_event_flags __attribute__((unused));
const enum tcp_state *unused_tcp_state __attribute__((unused));

static __always_inline bool starts_life(int oldstate, int newstate)
{
	return (oldstate == TCP_CLOSE && (newstate == TCP_SYN_SENT || newstate == TCP_LISTEN)) ||
	       (oldstate == TCP_LISTEN && newstate == TCP_SYN_RECV);
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

/* The error tcp_reset() gives a socket it resets in state (the same in
 * every kernel since 2.6, and on every arch: asm-generic's numbers). */
static __always_inline __u16 reset_error(int state)
{
	if (state == TCP_SYN_SENT)
		return 111; /* ECONNREFUSED */
	if (state == TCP_CLOSE_WAIT)
		return 32; /* EPIPE */
	return 104;        /* ECONNRESET */
}

/* One transition; inst says which instance of the state program runs it
 * (enum state_instance), for what each keeps per CPU. */
static __always_inline int handle(struct sock *sk, int oldstate, int newstate, __u32 inst)
{
	__u32 slot = inst == STATE_NESTED ? SLOT_STATE_NESTED : SLOT_STATE;
	__u64 now = bpf_ktime_get_ns();
	__u64 skp = (__u64)sk;
	struct tuple t = {};
	struct owner task = {};
	bool by_owner = made_by_owner(oldstate, newstate);
	__u16 proto, sk_err = 0;
	struct scratch *buf = scratch_slot(slot);
	/* Taken before anything can return: a note must not outlive its
	 * CLOSE (maps.bpf.h). tcp_reset() does nothing for a closed socket. */
	__u64 reset_ts = 0;

	if (newstate == TCP_CLOSE && oldstate != TCP_CLOSE)
		reset_ts = take_reset(skp);

	if (!buf || !read_common(sk, &t))
		return 0;
	/*
	 * A socket with an entry is a TCP socket whose netns is known: its
	 * transitions need no more than the common read (and at CLOSE the
	 * port and the error, which the kernel keeps elsewhere). Only a first
	 * transition reads the protocol and follows the netns pointer.
	 */
	struct conn *c = bpf_map_lookup_elem(&conns, &skp);
	if (c) {
		t.netns = c->netns;
		if (newstate == TCP_CLOSE && (c->marks & CONN_SPORT))
			t.sport = c->u.sport;
		else
			t.sport = tuple_sport(sk, &t, newstate);
		/* tcp_reset() set the error just before this CLOSE, from the
		 * state it leaves; otherwise it is read. */
		if (newstate == TCP_CLOSE)
			sk_err = reset_ts && reset_ts >= c->since_ns ? reset_error(oldstate) :
								       BPF_CORE_READ(sk, sk_err);
	} else {
		if (newstate == TCP_CLOSE)
			read_proto_sport_err(sk, &proto, &t.sport, &sk_err, buf);
		else
			read_proto_sport(sk, &proto, &t.sport, buf);
		if (proto != IPPROTO_TCP)
			return 0; /* SCTP and MPTCP sockets use the same tracepoint */
		t.netns = read_netns(&t);
	}
	unmap_v4(&t);
	/* The task is read only where it becomes the owner: a connection whose
	 * owner a syscall already named keeps it (and a listen() is
	 * remembered by its listener). */
	if (by_owner && (!c || c->source != OWNER_TASK || newstate == TCP_LISTEN))
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
		/* An earlier socket at this address may still be in the closed
		 * ring: its reset program must not take this socket's reset for
		 * its own. */
		if (newstate == TCP_CLOSE)
			remember_closed(skp, NULL, 0, 0, false, inst);
		return 0;
	}

	struct conn fresh = {};
	if (!c) {
		fresh.id = new_conn_id(inst);
		fresh.since_ns = now;
		fresh.netns = t.netns;
		if (!starts_life(oldstate, newstate))
			fresh.marks |= CONN_PARTIAL;
		if (oldstate == TCP_CLOSE && newstate == TCP_SYN_SENT)
			fresh.marks |= CONN_ACTIVE;
		if (by_owner) {
			conn_own(&fresh, &task);
		} else if (oldstate == TCP_LISTEN && newstate == TCP_SYN_RECV) {
			inherit_listener_owner(&fresh, &t);
		}
		c = &fresh;
	} else if (by_owner && c->source != OWNER_TASK) {
		/* The accepting process (a pre-forked worker, say) knows
		 * better than the listener's, or than nobody. */
		conn_own(c, &task);
	}

	__u64 delta = c == &fresh ? 0 : now - c->since_ns;
	bool pass = owner_matches(c);

	if (c->marks & CONN_PENDING) {
		c->marks &= ~CONN_PENDING;
		if (pass)
			emit_deferred(&t, c, buf);
	}

	if (held) {
		c->marks |= CONN_PENDING;
		c->u.pending.old = oldstate;
		c->u.pending.new = newstate;
	} else if (pass) {
		__u8 source = c->source;
		/* Later events carry what an earlier syscall recorded. */
		if (source == OWNER_TASK && !by_owner)
			source = OWNER_CARRIED;
		struct counters k;

		read_counters(sk, &k, (1 << oldstate) & STATES_AFTER_OUR_FIN, buf);
		/* The reset tcp_reset() noted before this CLOSE, on a
		 * connection tracked then (not first seen now), in the state
		 * this transition leaves: its event, as the reset program
		 * emitted it before, from the same counters. A note older than
		 * the state is an earlier socket's at this address. */
		if (reset_ts && c != &fresh && reset_ts >= c->since_ns)
			emit_reset_received(&t, c, &k, reset_ts, oldstate, buf);
		emit_state(sk, &t, c, &k, source, now, delta, oldstate, newstate, sk_err, buf);
	}

	if (!held && newstate != TCP_CLOSE && t.num && !(c->marks & (CONN_SPORT | CONN_PENDING))) {
		c->u.sport = t.num;
		c->marks |= CONN_SPORT;
	}

	if (newstate == TCP_CLOSE) {
		remember_closed(skp, c, t.net, t.sport, pass, inst);
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
	struct tuple t = {};
	struct scratch *buf;

	if (!sk)
		return 0;
	/* The common read brings the state too. */
	if (!read_common(sk, &t))
		return 0;
	int state = t.state;
	if (type == EVENT_SYN_RETRANSMIT && state != TCP_SYN_SENT)
		return 0; /* only the handshake's retransmits are events */

	struct conn *c = NULL;
	bool have_sport = false;
	/*
	 * close() and SO_LINGER 0 send their reset after the CLOSE, whose run
	 * left the connection in the closed ring with what this one would
	 * read again: the port, and the netns. Looked for first: a closed
	 * socket's entry is gone from conns.
	 */
	if (type == EVENT_RESET_SENT && state == TCP_CLOSE) {
		struct closed *cl = take_closed(skp);
		/* The slab may have handed the closed socket's memory to a
		 * socket of another namespace whose close the ring did not
		 * see (skipped by the kernel): not ours. */
		if (cl && cl->net == t.net) {
			c = &cl->c;
			t.sport = cl->sport;
			have_sport = true;
		}
	}
	if (!c)
		c = bpf_map_lookup_elem(&conns, &skp);
	if (!c)
		return 0;
	buf = scratch_slot(type - 1);
	if (!buf)
		return 0;
	t.netns = c->netns;
	if (!have_sport)
		t.sport = tuple_sport(sk, &t, state);
	unmap_v4(&t);
	if (!tuple_matches(&t, false)) {
		/* A connect that waited for its port, and the port does not pass. */
		if (state == TCP_SYN_SENT)
			bpf_map_delete_elem(&conns, &skp);
		return 0;
	}
	if (!owner_matches(c))
		return 0;
	if (c->marks & CONN_PENDING) {
		/* The SYN went out, so connect() has picked the port. */
		c->marks &= ~CONN_PENDING;
		emit_deferred(&t, c, buf);
	}
	emit_other(sk, &t, c, type, state, buf);
	return 0;
}

SEC("raw_tracepoint/tcp_send_reset")
int raw_tcp_send_reset(struct bpf_raw_tracepoint_args *ctx)
{
	/* TP_PROTO(const struct sock *sk, const struct sk_buff *skb[, reason]) */
	return handle_other((struct sock *)ctx->args[0], EVENT_RESET_SENT);
}

/* The state program emits the event at the CLOSE that follows
 * (maps.bpf.h's reset notes): here only the socket and the time. */
SEC("raw_tracepoint/tcp_receive_reset")
int raw_tcp_receive_reset(struct bpf_raw_tracepoint_args *ctx)
{
	/* TP_PROTO(struct sock *sk[, skb]) */
	if (ctx->args[0])
		note_reset(ctx->args[0]);
	return 0;
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
 * by its timer or early (reuse, RST). */
SEC("fentry/inet_twsk_kill")
int fentry_inet_twsk_kill(__u64 *ctx)
{
	struct inet_timewait_sock *tw = (struct inet_timewait_sock *)ctx[0];
	struct tuple t = {};

	t.sport = __builtin_bswap16(BPF_CORE_READ(tw, tw_sport));
	if (!read_common_unmapped((struct sock *)tw, &t) || !tuple_matches(&t, false))
		return 0;
	emit_time_wait_end(tw, &t);
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
	if (c && c->source != OWNER_TASK) {
		struct owner task = {};

		owner_from_task(&task);
		conn_own(c, &task);
	}
	return 0;
}

SEC("raw_tracepoint/inet_sock_set_state")
int raw_inet_sock_set_state(struct bpf_raw_tracepoint_args *ctx)
{
	/* TP_PROTO(const struct sock *sk, const int oldstate, const int newstate) */
	nest_note(ctx->args[0], (int)ctx->args[1], (int)ctx->args[2]);
	return handle((struct sock *)ctx->args[0], (int)ctx->args[1], (int)ctx->args[2],
		      STATE_MAIN);
}

/* Attached after raw_inet_sock_set_state: the same transition, done only
 * when the kernel skipped that one because it was running on this CPU. */
SEC("raw_tracepoint/inet_sock_set_state")
int raw_nested_inet_sock_set_state(struct bpf_raw_tracepoint_args *ctx)
{
	struct nest *n = nest_enter();

	if (!n)
		return 0;
	if (nest_caught(n, ctx->args[0], (int)ctx->args[1], (int)ctx->args[2]))
		handle((struct sock *)ctx->args[0], (int)ctx->args[1], (int)ctx->args[2],
		       STATE_NESTED);
	nest_leave(n);
	return 0;
}

/* A classic tracepoint's programs share one per-CPU guard (bpf_prog_active),
 * so a nested instance would be skipped as well: none here. */
SEC("tracepoint/sock/inet_sock_set_state")
int tp_inet_sock_set_state(struct trace_event_raw_inet_sock_set_state *ctx)
{
	return handle((struct sock *)ctx->skaddr, ctx->oldstate, ctx->newstate, STATE_MAIN);
}

/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Events into the ring buffer. Every event is reserved by event_reserve(),
 * which counts it lost when the ring is full, and handed over by
 * event_submit(), which decides on the reader's wakeup; what lies between
 * fills the event for its type.
 */
#ifndef __TCPFSM_EMIT_BPF_H
#define __TCPFSM_EMIT_BPF_H

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include "tcpfsm.h"
#include "tcp_state.bpf.h"
#include "maps.bpf.h"
#include "span.bpf.h"

/* Wake the reader only once this much data waits; it polls otherwise. Set
 * by the loader. */
volatile const __u32 wakeup_bytes = 0;

/* What one event takes in the ring buffer: its header and the event,
 * rounded up to 8 bytes. */
#define RECORD_SIZE ((8 + sizeof(struct event) + 7) & ~7)

static __always_inline void count_lost(void)
{
	__u32 zero = 0;
	__u64 *n = bpf_map_lookup_elem(&lost, &zero);
	if (n)
		__sync_fetch_and_add(n, 1); /* the nested instance may interrupt */
}

/* Room for one event, or NULL when the ring buffer is full: then the event
 * is counted lost, for user space to report. */
static __always_inline struct event *event_reserve(void)
{
	struct event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e)
		count_lost();
	return e;
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

static __always_inline void event_submit(struct event *e)
{
	bpf_ringbuf_submit(e, submit_flags());
}

/*
 * The events of the state and reset programs are built in the program's
 * scratch slot (once the counters are picked out of it) and copied into
 * the ring by bpf_ringbuf_output: one helper call where reserve and
 * submit were two. The unread data is asked for only every WAKE_EVERY-th
 * record of a slot, so the crossing is looked for in a window wide enough
 * for what all CPUs submit in between; missing it costs no event, the
 * reader's poll deadline reads them.
 */
#define WAKE_EVERY 8 /* a power of two */
#define WAKE_WINDOW (64 * RECORD_SIZE)

static __always_inline struct scratch *scratch_slot(__u32 slot)
{
	return bpf_map_lookup_elem(&scratch, &slot);
}

static __always_inline struct event *slot_event(struct scratch *buf)
{
	return (struct event *)buf->b;
}

static __always_inline void event_output(struct scratch *buf)
{
	__u64 flags = BPF_RB_NO_WAKEUP;

	if (!wakeup_bytes) {
		flags = 0;
	} else if (!(buf->submits++ & (WAKE_EVERY - 1))) {
		__u64 avail = bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA);
		if (avail + RECORD_SIZE >= wakeup_bytes &&
		    avail + RECORD_SIZE < wakeup_bytes + WAKE_WINDOW)
			flags = BPF_RB_FORCE_WAKEUP;
	}
	if (bpf_ringbuf_output(&events, buf->b, sizeof(struct event), flags))
		count_lost();
}

static __always_inline void fill_tuple(struct event *e, const struct tuple *t)
{
	e->netns = t->netns;
	e->family = t->family;
	e->sport = t->sport;
	e->dport = t->dport;
	__builtin_memcpy(e->saddr, t->saddr, sizeof(e->saddr));
	__builtin_memcpy(e->daddr, t->daddr, sizeof(e->daddr));
}

/* Everything but the counters, the time and the transition. */
static __always_inline void fill_event(struct event *e, __u8 type, const struct tuple *t,
				       const struct conn *c, __u8 owner_source)
{
	e->type = type;
	e->conn_id = c->id;
	fill_tuple(e, t);
	e->pid = c->who.pid;
	e->tid = c->who.tid;
	e->cgroup_id = c->who.cgroup_id;
	__builtin_memcpy(e->comm, c->who.comm, sizeof(e->comm));
	e->owner = owner_source;
	e->flags = c->marks & CONN_PARTIAL ? FLAG_PARTIAL : 0;
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
 * bytes_acked and bytes_received follow the sequence space, where SYN and
 * FIN take one number each. Say which of them the counters include, so
 * user space can report payload bytes exactly.
 */
static __always_inline __u8 control_flags(struct sock *sk, const struct tuple *t,
					  const struct conn *c, const struct counters *k,
					  int oldstate, int newstate)
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
		unsigned long sk_flags = t->have_flags ? t->sk_flags : read_sk_flags(sk);

		if (sk_flags & (1UL << bpf_core_enum_value(enum sock_flags, SOCK_DONE)))
			flags |= FLAG_FIN_RECEIVED;
	}
	return flags;
}

/* A state transition, as it happens, with the counters read for it; sk_err
 * is the socket's at CLOSE. */
static __always_inline void emit_state(struct sock *sk, const struct tuple *t, const struct conn *c,
				       const struct counters *k, __u8 owner_source, __u64 ts,
				       __u64 delta, int oldstate, int newstate, __u16 sk_err,
				       struct scratch *buf)
{
	struct event *e = slot_event(buf);
	fill_event(e, EVENT_STATE, t, c, owner_source);
	fill_counters(e, k);
	e->flags |= control_flags(sk, t, c, k, oldstate, newstate);
	if (newstate == TCP_CLOSE) {
		/* Set before the kernel closes on a reset or a timeout. */
		e->sk_err = sk_err;
		if (c->marks & CONN_TIME_WAIT)
			e->flags |= FLAG_TIME_WAIT;
		if (c->marks & CONN_TW_FIN_WAIT2)
			e->flags |= FLAG_TW_FIN_WAIT2;
	}
	e->ts_ns = ts;
	e->delta_ns = delta;
	e->oldstate = oldstate;
	e->newstate = newstate;
	event_output(buf);
}

/* A held-back transition: the addresses are known now, the time is kept. */
static __always_inline void emit_deferred(const struct tuple *t, const struct conn *c,
					  struct scratch *buf)
{
	struct event *e = slot_event(buf);

	fill_event(e, EVENT_STATE, t, c, c->source);
	/* Nothing had been sent or received in the state's first instant. */
	e->bytes_acked = e->bytes_received = 0;
	e->srtt_us = e->total_retrans = e->segs_in = e->segs_out = 0;
	e->flags |= FLAG_DEFERRED;
	e->ts_ns = c->since_ns;
	e->delta_ns = 0;
	e->oldstate = c->u.pending.old;
	e->newstate = c->u.pending.new;
	event_output(buf);
}

/* A reset received in state, at ts, by the state program at the CLOSE
 * that followed it: what emit_other() made of it in the reset program. */
static __always_inline void emit_reset_received(const struct tuple *t, const struct conn *c,
						const struct counters *k, __u64 ts, int state,
						struct scratch *buf)
{
	__u8 source = c->source == OWNER_TASK ? OWNER_CARRIED : c->source;
	struct event *e = slot_event(buf);

	fill_event(e, EVENT_RESET_RECEIVED, t, c, source);
	fill_counters(e, k);
	e->ts_ns = ts;
	e->delta_ns = 0;
	e->oldstate = state;
	e->newstate = state;
	event_output(buf);
}

/* A reset or a SYN retransmit of a tracked socket (type), in its state. */
static __always_inline void emit_other(struct sock *sk, const struct tuple *t, const struct conn *c,
				       __u8 type, int state, struct scratch *buf)
{
	__u8 source = c->source == OWNER_TASK ? OWNER_CARRIED : c->source;
	struct counters k;

	read_counters(sk, &k, false, buf);
	struct event *e = slot_event(buf);
	fill_event(e, type, t, c, source);
	fill_counters(e, &k);
	e->ts_ns = bpf_ktime_get_ns();
	e->delta_ns = 0;
	e->oldstate = state;
	e->newstate = state;
	event_output(buf);
}

/* The end of a time-wait socket: no connection entry, so no id, owner or
 * counters; user space matches it to its connection by tuple. */
static __always_inline void emit_time_wait_end(struct inet_timewait_sock *tw, const struct tuple *t)
{
	struct event *e = event_reserve();
	if (!e)
		return;
	__builtin_memset(e, 0, sizeof(*e));
	e->type = EVENT_TIME_WAIT_END;
	e->ts_ns = bpf_ktime_get_ns();
	fill_tuple(e, t);
	e->oldstate = BPF_CORE_READ(tw, tw_substate);
	e->newstate = TCP_CLOSE;
	event_submit(e);
}

#endif /* __TCPFSM_EMIT_BPF_H */

/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * What the programs remember: every map, the types of its entries, and the
 * few accessors that own one map each (connection ids, the closed ring).
 * The loader sizes conns and events (tracer/probe).
 */
#ifndef __TCPFSM_MAPS_BPF_H
#define __TCPFSM_MAPS_BPF_H

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

/* Who owns a connection: 32 bytes without padding, so that struct conn
 * keeps its own small fields right after it. */
struct who {
	__u64 cgroup_id;
	__u32 pid;
	__u32 tid;
	__u8 comm[16];
};

/* The connection's owner, captured in process context. */
struct owner {
	struct who who;
	__u8 source;    /* enum owner_source */
	__u8 in_cgroup; /* owner is inside filter_cgroup */
	__u8 _pad[6];
};

/*
 * What tcpfsm remembers about one socket between two of its transitions:
 * 56 bytes, one entry of conns per tracked socket (value, key and the
 * kernel's element header: 128 bytes, preallocated). The owner is kept as
 * its who, where it came from and a mark (conn_own()), not as a struct
 * owner, whose padding would make it 64.
 */
struct conn {
	__u64 id;
	__u64 since_ns; /* when the current state was entered */
	struct who who; /* the owner */
	__u32 netns;    /* the socket's netns inode, read once at the first event */
	__u8 source;    /* enum owner_source: where who came from */
	__u8 marks;     /* CONN_* below, for the programs only */
	union {
		struct {
			__u8 old, new;
		} pending; /* a transition held back (CONN_PENDING) */
		/* CONN_SPORT: the local port, host order, kept from a transition
		 * that read it with the rest (skc_num) once nothing is held:
		 * the CLOSE, where skc_num is zero, need not read inet_sport. */
		__u16 sport;
	} u;
};

enum conn_marks {
	CONN_PENDING = 1 << 0,      /* a transition waits for the socket's addresses */
	CONN_ACTIVE = 1 << 1,       /* opened by connect() */
	CONN_TIME_WAIT = 1 << 2,    /* tcp_time_wait() is handing it to a time-wait socket */
	CONN_TW_FIN_WAIT2 = 1 << 3, /* ... in the FIN_WAIT2 substate */
	/* The first transition seen was not the socket's birth: every event
	 * of the connection carries FLAG_PARTIAL. */
	CONN_PARTIAL = 1 << 4,
	CONN_IN_CGROUP = 1 << 5, /* the owner is inside filter_cgroup (struct owner's in_cgroup) */
	CONN_SPORT = 1 << 6,     /* u.sport holds the local port */
};

/*
 * The state program runs twice per transition on a raw tracepoint: the main
 * instance, then a nested one that acts only while the main one is busy on
 * this CPU (nest.bpf.h). What they write per CPU is kept apart by instance.
 */
enum state_instance {
	STATE_MAIN = 0,
	STATE_NESTED = 1,
	STATE_INSTANCES, /* a power of two: indexes are masked */
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

/* Index 0: records that did not fit in the ring buffer. Added to atomically:
 * a program that runs nested in another (nest.bpf.h) may count too. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} lost SEC(".maps");

/* Per-CPU sequences for connection ids, one per state program instance
 * (enum state_instance): no atomics needed, because a program never nests
 * inside itself on one CPU, and the nested instance has its own. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STATE_INSTANCES);
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
	/* What the reset program would read again otherwise: the socket's
	 * struct net (compared with the one it reads, for a socket of
	 * another namespace at the same address) and its local port (from
	 * inet_sport, which the kernel keeps until it frees the socket). */
	__u64 net;
	__u16 sport;
	__u8 _pad[6];
};

/* Each state program instance writes its own half (enum state_instance),
 * so the nested one never takes a slot the main one is filling; resets
 * search both. */
struct closed_ring {
	__u32 next[STATE_INSTANCES];
	struct closed slot[STATE_INSTANCES * CLOSED_SLOTS];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct closed_ring);
} last_closed SEC(".maps");

#define TP_SPAN 1024 /* the counters: 668 bytes on 6.18 */

struct scratch {
	__u8 b[TP_SPAN];
	__u32 submits; /* events this slot submitted: emit.bpf.h's wakeup check */
	__u32 _pad;
};

/*
 * Per-CPU room for span reads (span.bpf.h) too large for the stack, one
 * slot per program (SLOT_*): a program never nests in itself on a CPU, but
 * another one of tcpfsm's can run in a softirq that interrupts it.
 */
enum scratch_slot {
	SLOT_STATE = 0,
	/* handle_other(): the event type minus one (1 to 3) */
	SLOT_STATE_NESTED = 4, /* the state program's nested instance */
	SCRATCH_SLOTS,
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SCRATCH_SLOTS);
	__type(key, __u32);
	__type(value, struct scratch);
} scratch SEC(".maps");

#define CPU_BITS 12 /* ids stay unique for up to 4096 CPUs */

/* The instance's own sequence, interleaved with the other's in the low
 * bit: ids stay unique without atomics. */
static __always_inline __u64 new_conn_id(__u32 inst)
{
	__u64 *seq = bpf_map_lookup_elem(&id_seq, &inst);
	if (!seq)
		return 0;
	*seq += 1;
	return (((*seq << 1) | (inst & 1)) << CPU_BITS) |
	       (bpf_get_smp_processor_id() & ((1 << CPU_BITS) - 1));
}

/* A closed connection into this CPU's ring, the instance's half, when its
 * events pass the filters (pass). A slot the reset never took may still
 * hold an earlier socket at the same address: that socket is freed, and
 * the slab hands its memory to the next one, often the very next
 * connection. Clear it first, or this socket's reset finds that
 * connection instead. */
static __always_inline void remember_closed(__u64 skp, const struct conn *c, __u64 net, __u16 sport,
					    bool pass, __u32 inst)
{
	__u32 zero = 0;
	struct closed_ring *ring = bpf_map_lookup_elem(&last_closed, &zero);

	if (!ring)
		return;
	for (int i = 0; i < STATE_INSTANCES * CLOSED_SLOTS; i++) {
		if (ring->slot[i].sk == skp)
			ring->slot[i].sk = 0;
	}
	if (pass && inst < STATE_INSTANCES) {
		__u32 i = inst * CLOSED_SLOTS + (ring->next[inst] & (CLOSED_SLOTS - 1));
		struct closed *slot = &ring->slot[i & (STATE_INSTANCES * CLOSED_SLOTS - 1)];
		slot->sk = skp;
		slot->c = *c;
		slot->net = net;
		slot->sport = sport;
		ring->next[inst]++;
	}
}

/* The closed connection of this socket, taken out of the ring; NULL when it
 * is not there. */
static __always_inline struct closed *take_closed(__u64 skp)
{
	__u32 zero = 0;
	struct closed_ring *ring = bpf_map_lookup_elem(&last_closed, &zero);
	struct closed *c = NULL;

	if (ring) {
		for (int i = 0; i < STATE_INSTANCES * CLOSED_SLOTS; i++) {
			if (ring->slot[i].sk == skp) {
				c = &ring->slot[i];
				ring->slot[i].sk = 0;
				break;
			}
		}
	}
	return c;
}

/*
 * Resets received, per CPU, for the state program to emit. tcp_reset()
 * fires tcp:tcp_receive_reset and, unless the socket is already closed,
 * calls tcp_done() at once, whose tcp_set_state(TCP_CLOSE) is the
 * socket's next transition, on the same CPU, with the socket's counters
 * as they were at the tracepoint (only the write queue is purged in
 * between). So the reset program only notes the socket and the time, and
 * the state program's run for that CLOSE emits the reset event from the
 * connection and the counters it has at hand: one read of the socket and
 * one lookup fewer. A few slots: a softirq that interrupts tcp_reset()
 * between its tracepoint and its CLOSE (the socket's backlog runs with
 * softirqs enabled) can reset other sockets in between. (That backlog
 * runs in process context: a preemptible kernel that migrates the task
 * between the tracepoint and the CLOSE leaves the note behind, and the
 * reset has no event; the closed ring has the same limit.)
 */
#define RESET_NOTES 4 /* a power of two */

struct reset_note {
	__u64 sk;
	__u64 ts_ns; /* bpf_ktime_get_ns() at the tracepoint */
};

struct reset_notes {
	__u32 next;
	__u32 _pad;
	struct reset_note note[RESET_NOTES];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct reset_notes);
} reset_notes SEC(".maps");

/* Only the reset program writes notes, and it never nests in itself on a
 * CPU; the state program may run in a softirq that interrupts it, so the
 * socket is written last, and the note is cleared before. */
static __always_inline void note_reset(__u64 skp)
{
	__u32 zero = 0;
	struct reset_notes *r = bpf_map_lookup_elem(&reset_notes, &zero);

	if (!r)
		return;
	struct reset_note *n = &r->note[r->next & (RESET_NOTES - 1)];
	r->next++;
	*(volatile __u64 *)&n->sk = 0;
	*(volatile __u64 *)&n->ts_ns = bpf_ktime_get_ns();
	*(volatile __u64 *)&n->sk = skp;
}

/* The time of the reset noted for this socket, taken out of the notes; 0
 * when there is none. Every CLOSE takes its socket's note, whether it
 * emits or not, so that no note outlives its CLOSE. */
static __always_inline __u64 take_reset(__u64 skp)
{
	__u32 zero = 0;
	struct reset_notes *r = bpf_map_lookup_elem(&reset_notes, &zero);
	__u64 ts = 0;

	if (!r)
		return 0;
	for (int i = 0; i < RESET_NOTES; i++) {
		struct reset_note *n = &r->note[i];

		/* Two only when a reset of a closed socket (tcp_reset() does
		 * nothing then) left one: the newer is this CLOSE's. */
		if (*(volatile __u64 *)&n->sk == skp) {
			if (n->ts_ns > ts)
				ts = n->ts_ns;
			n->sk = 0;
		}
	}
	return ts;
}

#endif /* __TCPFSM_MAPS_BPF_H */

/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * A second instance of the state program, for the transitions the kernel
 * would skip. A raw tracepoint program does not run nested in itself on a
 * CPU: the kernel guards each program with a per-CPU counter and counts a
 * nested call as a recursion miss. At a mass close the state program runs
 * in process context (close(): ESTABLISHED->FIN_WAIT1), an interrupt lands,
 * and the NET_RX softirq run at its exit changes the state of dozens of
 * sockets on the same CPU while the program is still running: every one
 * of them was lost.
 *
 * The nested instance is another program attached to the same tracepoint
 * after the main one, with its own guard: for each call the kernel runs
 * the main program (or skips it), then the nested one. The main program
 * notes the call it runs for (socket, old and new state) in this CPU's
 * ring of pending calls; the nested one finds its call there and drops it
 * (the common path: one per-CPU lookup, one compare, two stores), or does
 * not, and then the main one was skipped for it and it does the work.
 *
 * A mark the main program set on entry and cleared on exit would leave the
 * kernel's part of a run unguarded (between its guard and the program's
 * first and last instructions): an interrupt there, and the softirq's
 * transitions were lost. Noting the call itself leaves no such gap: a call
 * the main program did not note was not run by it. The ring has several
 * slots because the main program can run for another call (an interrupt)
 * between its run and the nested one's for the same call.
 *
 * An interrupt can also land while the nested instance runs (after the
 * main program finished for the same call, before the nested one found
 * its note): the main program runs for each transition of that softirq
 * and the nested one is skipped for each, so none of their notes is
 * dropped, and they pile up above the pending call's. Searched four deep,
 * the pending note was not found under four of them, and the nested
 * instance did the call a second time (seen on 6.12 under qemu: one
 * client's ESTABLISHED->FIN_WAIT1 twice, 440 us apart, with four
 * recursion misses of the nested instance). So the nested instance marks
 * itself busy while it runs, and the main program, finding the mark, notes
 * nothing: its nested run is skipped for certain. What the mark cannot
 * cover (an interrupt in the kernel's part of the nested run, before its
 * first instruction) the search covers: it looks through the whole ring,
 * newest first. A note left behind by a skipped nested run is from a call
 * that is over; it only matches a later call of the same socket address
 * and states, when the kernel also skipped the main program for that one.
 */
#ifndef __TCPFSM_NEST_BPF_H
#define __TCPFSM_NEST_BPF_H

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

/* Calls pending are the newest few (one, plus one per interrupt between a
 * main run and its nested run); the rest of the ring is room for notes
 * left behind by skipped nested runs. An interrupt in the kernel's part of
 * a nested run, before its busy mark, leaves one note for each transition
 * of its softirq above the pending call's: 32 slots were too few (6.12
 * under qemu, 24,000 pairs closed at once: 94 nested runs skipped, one
 * server's CLOSE_WAIT->LAST_ACK handled twice, handled 319 for the main
 * program's 318 misses). A softirq's NET_RX run ends at netdev_budget
 * (300) packets. Found at once in the common path; searched whole only
 * when the main program was skipped. A power of two. */
#define NEST_PENDING 256

struct pending_call {
	__u64 sk;
	__u32 oldstate;
	__u32 newstate;
};

struct nest {
	__u32 top;     /* calls noted so far; the next note goes at top % NEST_PENDING */
	__u32 busy;    /* the nested instance is running on this CPU */
	__u64 handled; /* calls the nested instance handled itself */
	struct pending_call call[NEST_PENDING];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct nest);
} nest SEC(".maps");

static __always_inline struct nest *nest_this_cpu(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&nest, &zero);
}

/* The main program notes its call before anything else, unless it runs
 * inside the nested instance's run (an interrupt), whose call it cannot
 * be. Nothing else writes a note: the main program never nests in
 * itself, and the nested instance only moves top down. */
static __always_inline void nest_note(__u64 sk, int oldstate, int newstate)
{
	struct nest *n = nest_this_cpu();

	if (!n || *(volatile __u32 *)&n->busy)
		return;
	__u32 top = *(volatile __u32 *)&n->top;
	struct pending_call *c = &n->call[top & (NEST_PENDING - 1)];
	c->sk = sk;
	c->oldstate = oldstate;
	c->newstate = newstate;
	*(volatile __u32 *)&n->top = top + 1;
}

static __always_inline bool nest_is(const struct pending_call *c, __u64 sk, int oldstate,
				    int newstate)
{
	return c->sk == sk && c->oldstate == (__u32)oldstate && c->newstate == (__u32)newstate;
}

/*
 * Whether the main program was skipped for this call: its note is not
 * there. When it is (nearly always the newest one), it is dropped with any
 * left above it, and cleared, so that only notes of calls still pending
 * can match. (The loader clears the notes the main program made before
 * this instance was attached: they would never be dropped.) A skipped
 * call is counted, since it stands for one of the main program's
 * recursion misses. The caller has marked the instance busy (nest_enter).
 */
static __always_inline bool nest_caught(struct nest *n, __u64 sk, int oldstate, int newstate)
{
	__u32 top = *(volatile __u32 *)&n->top;
	for (__u32 i = 1; i <= NEST_PENDING; i++) {
		struct pending_call *c = &n->call[(top - i) & (NEST_PENDING - 1)];

		if (nest_is(c, sk, oldstate, newstate)) {
			c->sk = 0; /* never found again */
			*(volatile __u32 *)&n->top = top - i;
			return false;
		}
	}
	n->handled++; /* this instance never nests in itself */
	return true;
}

/* The nested instance's run begins and ends: the main program notes no
 * call in between (nest_note). */
static __always_inline struct nest *nest_enter(void)
{
	struct nest *n = nest_this_cpu();

	if (n)
		*(volatile __u32 *)&n->busy = 1;
	return n;
}

static __always_inline void nest_leave(struct nest *n)
{
	*(volatile __u32 *)&n->busy = 0;
}

#endif /* __TCPFSM_NEST_BPF_H */

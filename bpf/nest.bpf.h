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
 * between its run and the nested one's for the same call; if that nested
 * run is skipped too (the nested instance was busy), its note stays behind
 * and is overwritten later.
 */
#ifndef __TCPFSM_NEST_BPF_H
#define __TCPFSM_NEST_BPF_H

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

#define NEST_PENDING 8 /* a power of two */
/* How deep the nested instance looks: calls still pending are the newest
 * few (one, plus one per interrupt between a main run and its nested run),
 * while notes left behind by a skipped nested run sit above top and are
 * never looked at before they are overwritten. */
#define NEST_SEARCH 4

struct pending_call {
	__u64 sk;
	__u32 oldstate;
	__u32 newstate;
};

struct nest {
	__u32 top; /* calls noted so far; the next note goes at top % NEST_PENDING */
	__u32 _pad;
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

/* The main program notes its call before anything else. Nothing else
 * writes a note: the main program never nests in itself, and the nested
 * instance only moves top down. */
static __always_inline void nest_note(__u64 sk, int oldstate, int newstate)
{
	struct nest *n = nest_this_cpu();

	if (!n)
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
 * this instance was attached: they would never be dropped.) A skipped call is counted, since it stands for one of the
 * main program's recursion misses.
 */
static __always_inline bool nest_caught(__u64 sk, int oldstate, int newstate)
{
	struct nest *n = nest_this_cpu();

	if (!n)
		return false;
	__u32 top = *(volatile __u32 *)&n->top;
	for (__u32 i = 1; i <= NEST_SEARCH; i++) {
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

#endif /* __TCPFSM_NEST_BPF_H */

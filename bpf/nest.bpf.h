/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * A second instance of the state program, for the transitions the kernel
 * would skip. A raw tracepoint program does not run nested in itself on a
 * CPU: the kernel guards each program with a per-CPU counter and counts a
 * nested call as a recursion miss. At a mass close the state program runs
 * in process context (close(): ESTABLISHED->FIN_WAIT1), an interrupt lands,
 * and the NET_RX softirq run at its exit changes the state of dozens of
 * sockets on the same CPU while the program is still busy: every one of
 * them was lost.
 *
 * The nested instance is another program attached to the same tracepoint
 * after the main one, with its own guard. The main instance marks this CPU
 * busy while it runs; the nested one does the work only while that mark
 * is set, that is, only when the kernel skipped the main one for this very
 * call, and returns at once otherwise. Each nested run it handles is
 * counted, so user space can tell the main program's recursion misses that
 * were caught from those that were lost.
 */
#ifndef __TCPFSM_NEST_BPF_H
#define __TCPFSM_NEST_BPF_H

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

struct nest {
	__u32 busy; /* the main instance is running on this CPU */
	__u32 _pad;
	__u64 handled; /* runs of the nested instance while it was */
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

/* Plain stores: only the main instance writes busy on this CPU, and only
 * the nested instance reads it, from an interrupt of the main one. */
static __always_inline void nest_mark(struct nest *n, __u32 busy)
{
	if (n)
		*(volatile __u32 *)&n->busy = busy;
}

/* Whether the main instance is busy on this CPU; counted when it is,
 * since this run then stands for one of its recursion misses. */
static __always_inline bool nest_caught(void)
{
	struct nest *n = nest_this_cpu();

	if (!n || !*(volatile __u32 *)&n->busy)
		return false;
	n->handled++; /* this instance never nests in itself */
	return true;
}

#endif /* __TCPFSM_NEST_BPF_H */

/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The filters, as load-time configuration. The loader rewrites these
 * constants before the verifier sees the program (tracer/probe/filter.go),
 * so a disabled filter costs one predictable branch and filtered events
 * never reach the ring buffer. What the socket is is judged here; who owns
 * it, in owner.bpf.h.
 */
#ifndef __TCPFSM_FILTER_BPF_H
#define __TCPFSM_FILTER_BPF_H

#include "vmlinux.h"
#include "span.bpf.h"

volatile const __u32 filter_pid = 0;          /* owner tgid; 0: any */
volatile const __u32 filter_netns = 0;        /* netns inode; 0: any */
volatile const __u8 filter_family = 0;        /* AF_INET, AF_INET6; 0: any */
volatile const __u8 filter_lports = 0;        /* 1: only ports set in lport_bits */
volatile const __u8 filter_rports = 0;        /* 1: only ports set in rport_bits */
volatile const __u64 filter_cgroup = 0;       /* cgroup v2 id; 0: any */
volatile const __u32 filter_cgroup_level = 0; /* its depth below the root */
volatile const __u64 lport_bits[1024] = {};   /* one bit per port */
volatile const __u64 rport_bits[1024] = {};

static __always_inline bool port_set(volatile const __u64 *bits, __u16 port)
{
	return (bits[port >> 6] >> (port & 63)) & 1;
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

#endif /* __TCPFSM_FILTER_BPF_H */

/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Who owns a connection: the task of a syscall that only the owner makes,
 * else the process that listened on the port that accepted it; and the
 * owner filters.
 */
#ifndef __TCPFSM_OWNER_BPF_H
#define __TCPFSM_OWNER_BPF_H

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "tcpfsm.h"
#include "tcp_state.bpf.h"
#include "maps.bpf.h"
#include "span.bpf.h"
#include "filter.bpf.h"

static __always_inline void owner_from_task(struct owner *o)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();

	o->who.pid = pid_tgid >> 32;
	o->who.tid = (__u32)pid_tgid;
	o->who.cgroup_id = bpf_get_current_cgroup_id();
	bpf_get_current_comm(&o->who.comm, sizeof(o->who.comm));
	o->source = OWNER_TASK;
	o->in_cgroup = 0;
	if (filter_cgroup)
		o->in_cgroup = bpf_get_current_ancestor_cgroup_id(filter_cgroup_level) ==
			       filter_cgroup;
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

/* c's owner becomes o, and where o came from. */
static __always_inline void conn_own(struct conn *c, const struct owner *o)
{
	c->who = o->who;
	c->source = o->source;
	c->marks &= ~CONN_IN_CGROUP;
	if (o->in_cgroup)
		c->marks |= CONN_IN_CGROUP;
}

/* Whether c's owner passes the owner filters. */
static __always_inline bool owner_matches(const struct conn *c)
{
	if (filter_pid && (c->source == OWNER_UNKNOWN || c->who.pid != filter_pid))
		return false;
	if (filter_cgroup && !(c->marks & CONN_IN_CGROUP))
		return false;
	return true;
}

/* Listeners are remembered by namespace and port, from listen() to their
 * close, with the owner that listen() captured. */
static __always_inline void track_listener(struct sock *sk, const struct tuple *t, int oldstate,
					   int newstate, const struct owner *o)
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

/* An accepted socket (LISTEN->SYN_RECV, when its local port is still its
 * listener's) inherits its listener's owner, where that one is known. */
static __always_inline void inherit_listener_owner(struct conn *c, const struct tuple *t)
{
	struct listener_key key = { .netns = t->netns, .port = t->sport };
	struct listener *l = bpf_map_lookup_elem(&listeners, &key);

	if (l && l->owner.source != OWNER_UNKNOWN) {
		conn_own(c, &l->owner);
		c->source = OWNER_LISTENER;
	}
}

#endif /* __TCPFSM_OWNER_BPF_H */

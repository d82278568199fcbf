/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The kernel's TCP states (include/net/tcp_states.h) and the sets of them
 * the programs test. */
#ifndef __TCPFSM_TCP_STATE_BPF_H
#define __TCPFSM_TCP_STATE_BPF_H

/* Also a Go type (bpf2go -type tcp_state): the states events carry. */
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

/* The states of a socket whose FIN is queued, before CLOSE. */
#define STATES_AFTER_OUR_FIN                                                                      \
	((1 << TCP_FIN_WAIT1) | (1 << TCP_FIN_WAIT2) | (1 << TCP_CLOSING) | (1 << TCP_LAST_ACK) | \
	 (1 << TCP_TIME_WAIT))
/* The states of a socket that may have taken the peer's FIN. */
#define STATES_AFTER_PEER_FIN \
	((1 << TCP_CLOSE_WAIT) | (1 << TCP_LAST_ACK) | (1 << TCP_CLOSING) | (1 << TCP_CLOSE))

#endif /* __TCPFSM_TCP_STATE_BPF_H */

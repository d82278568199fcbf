/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The record the BPF programs hand to user space. This is the only
 * definition: bpf2go generates the Go type from it (-type event), and the
 * record files written by `tcpfsm record` hold these bytes verbatim, so any
 * change to the layout must bump the record format version in Go.
 */
#ifndef __TCPFSM_H__
#define __TCPFSM_H__

/* What an event reports. */
enum event_type {
	EVENT_STATE = 1,          /* a state transition of a TCP socket */
	EVENT_RESET_SENT = 2,     /* tcp:tcp_send_reset for a tracked socket */
	EVENT_RESET_RECEIVED = 3, /* tcp:tcp_receive_reset for a tracked socket */
	EVENT_SYN_RETRANSMIT = 4, /* tcp:tcp_retransmit_skb while in SYN_SENT */
	EVENT_TIME_WAIT_END = 5,  /* a time-wait socket torn down (fentry, where available) */
};

/* Where the owner fields of an event come from. */
enum owner_source {
	OWNER_UNKNOWN = 0,  /* never seen in a syscall: pid, comm, cgroup are zero */
	OWNER_TASK = 1,     /* the task that made this very transition (connect, listen, close) */
	OWNER_CARRIED = 2,  /* remembered from an earlier transition of this connection */
	OWNER_LISTENER = 3, /* inherited from the listening socket that accepted it */
};

enum event_flags {
	/* The first event seen for this socket was not the start of its life
	 * (the tracer started late, or its map entry was evicted). */
	FLAG_PARTIAL = 1 << 0,
	/* A CLOSE->SYN_SENT event whose emission waited until the kernel had
	 * picked the local port; ts_ns is still the time of the transition. */
	FLAG_DEFERRED = 1 << 1,
	/* Sequence-space control flags the byte counters include: subtract
	 * them to get payload bytes. */
	FLAG_SYN_ACKED = 1 << 2,    /* bytes_acked counts our SYN */
	FLAG_FIN_ACKED = 1 << 3,    /* bytes_acked counts our FIN */
	FLAG_FIN_RECEIVED = 1 << 4, /* bytes_received counts the peer's FIN */
	/* The kernel handed the connection to a time-wait socket at this
	 * CLOSE (seen by fentry on tcp_time_wait, where the kernel allows). */
	FLAG_TIME_WAIT = 1 << 5,
	/* ... in its FIN_WAIT2 substate: an orphan still waiting for the
	 * peer's FIN. */
	FLAG_TW_FIN_WAIT2 = 1 << 6,
};

struct event {
	__u64 ts_ns;          /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
	__u64 conn_id;        /* one per socket lifetime, unique in this tracer; 0: TIME_WAIT_END */
	__u64 delta_ns;       /* time spent in oldstate; 0 when its start was not seen */
	__u64 cgroup_id;      /* owner's cgroup v2 id */
	__u64 bytes_acked;    /* tcp_sock->bytes_acked, see FLAG_SYN_ACKED, FLAG_FIN_ACKED */
	__u64 bytes_received; /* tcp_sock->bytes_received, see FLAG_FIN_RECEIVED */
	__u32 netns;          /* network namespace inode */
	__u32 pid;            /* owner's process id (tgid) */
	__u32 tid;            /* owner's thread id */
	__u32 srtt_us;        /* smoothed RTT in microseconds */
	__u32 total_retrans;
	__u32 segs_in;
	__u32 segs_out;
	__u16 sport;    /* host byte order */
	__u16 dport;    /* host byte order */
	__u8 saddr[16]; /* IPv4 in the first 4 bytes */
	__u8 daddr[16];
	__u8 comm[16]; /* owner's comm */
	__u8 type;     /* enum event_type */
	__u8 family;   /* AF_INET or AF_INET6; IPv4-mapped IPv6 is AF_INET */
	__u8 oldstate; /* STATE: the transition; other types: the state at the time */
	__u8 newstate; /* (TIME_WAIT_END: the time-wait substate, then CLOSE) */
	__u8 owner;    /* enum owner_source */
	__u8 flags;    /* enum event_flags */
	__u16 sk_err;  /* sk->sk_err at CLOSE: ETIMEDOUT, ECONNREFUSED, ECONNRESET...; else 0 */
};

#endif /* __TCPFSM_H__ */

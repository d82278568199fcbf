package probe

//go:generate go tool bpf2go -cc clang-19 -strip llvm-strip-19 -cflags "-O2 -g -Wall -Werror" -target amd64,arm64 -type event -type event_type -type owner_source -type event_flags -type tcp_state tcpfsm ../../bpf/tcpfsm.bpf.c -- -I../../bpf

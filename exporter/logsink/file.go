package logsink

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// OpenFile opens path for appending, creating it 0640, and checks that it
// takes writes: a directory, a read-only file system, or a file of /proc
// or /sys (which are kernel settings, not storage) fails here, not at the
// first line. Append mode keeps every write at the end of the file, even
// after another process truncated it (logrotate's copytruncate).
func OpenFile(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
	if err != nil {
		return nil, err
	}
	if err := checkWritable(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return f, nil
}

func checkWritable(f *os.File) error {
	// Through SyscallConn, not Fd: Fd would make a pipe blocking, and
	// its writes then could not be given up at Close.
	var st unix.Statfs_t
	var serr error
	rc, err := f.SyscallConn()
	if err == nil {
		err = rc.Control(func(fd uintptr) { serr = unix.Fstatfs(int(fd), &st) })
	}
	if err != nil {
		return err
	}
	if serr == nil {
		switch st.Type {
		case unix.PROC_SUPER_MAGIC, unix.SYSFS_MAGIC:
			return errors.New("a file of /proc or /sys, not a log file")
		}
	}
	// A write of nothing reaches the file's own write method: files that
	// refuse every write (/dev/full: ENOSPC) say so now.
	if _, err := f.Write(nil); err != nil {
		return err
	}
	return nil
}

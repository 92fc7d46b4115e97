// Package lazyfs is a test-only FUSE filesystem that simulates power loss.
//
// A lazyfs mount passes every operation through to a backing directory,
// except that file data written and not yet fsynced is held in memory, the
// way a kernel holds dirty pages in its page cache. Crash throws that memory
// away and unmounts, so a later Mount of the same backing directory sees
// only what was made durable. The fault suite uses it to prove that mcpd
// acknowledges nothing before an fsync: nodes run with their data dirs on
// lazyfs mounts, get SIGKILLed, the mounts crash, and the restarted cluster
// must still hold every acknowledged message.
//
// # Durability model
//
// File contents and file sizes are lazy. A write(2) goes into a per-inode
// overlay of 4 KiB pages; truncate, ftruncate, open with O_TRUNC and
// fallocate change a pending size. Reads, mmap page faults, stat and lseek
// see the overlay merged over the backing file, so processes on the mount
// observe ordinary POSIX behaviour. fsync(2) and fdatasync(2) on any
// descriptor of the file write the whole overlay of that inode (contents
// and size) to the backing file, which is then fsynced too; from then on
// that state survives Crash. close(2) makes nothing durable.
//
// Namespace operations are durable at once: create, mkdir, mknod, symlink,
// link, rename, unlink and rmdir, as well as chmod, chown, utimes and
// xattrs, are applied to the backing directory when they happen, as if every
// directory were fsynced after every change. A file created and never
// fsynced therefore survives Crash with size zero (or, if it existed
// before, with its last synced contents), and a rename is never lost. This
// is weaker than a real filesystem, which can lose an unsynced rename, so
// lazyfs catches missing file fsyncs but not missing directory fsyncs.
//
// After Crash the backing directory holds exactly the durable state: it can
// be inspected directly, or mounted again with Mount.
//
// Unmount is a clean shutdown: like an operating system that writes back
// its page cache before powering off, it makes every pending write durable
// first.
//
// # Use from a test
//
// Mount from the test process and run the programs under test as child
// processes whose files live under the mount point:
//
//	lfs, err := lazyfs.Mount(mnt, backing, nil)
//	// start children using mnt; they write, fsync, acknowledge
//	// SIGKILL every child and Wait for it
//	err = lfs.Crash()                        // drop all unsynced data
//	lfs, err = lazyfs.Mount(mnt, backing, nil) // what a reboot would see
//	// restart the children on mnt and check what they kept
//	t.Cleanup(func() { lfs.Unmount() })
//
// Every process with a file open on the mount must be dead before Crash or
// Unmount. If the mount is still busy after a few seconds, it is detached
// and its FUSE connection aborted (through fusectl, mounted at
// /sys/fs/fuse/connections if need be), so the remaining users get errors
// rather than hang, and an error is returned. This matters most for the
// test process itself: it must close its own files on the mount before
// unmounting, even when a test fails. The test process must also not
// mmap files of its own mount: a page fault served by the same Go process
// can deadlock against the garbage collector, so bbolt and other mmap users
// belong in child processes (a test can inspect the backing directory
// directly once the mount is gone).
//
// # Requirements and limits
//
// Mounting needs root and /dev/fuse; it calls mount(2) directly and never
// fusermount. The backing directory must be a single filesystem (inode
// numbers identify files). Locks (flock, fcntl) are handled by the kernel
// locally to the mount. copy_file_range, statx and O_TMPFILE are refused so
// that callers fall back to operations lazyfs models; fallocate supports
// only plain allocation and FALLOC_FL_KEEP_SIZE. Memory use is one page per
// dirty 4 KiB of file data.
package lazyfs

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

const (
	// pageSize is the granularity of the in-memory overlay.
	pageSize = 4096
	// fsyncFdatasync is FUSE_FSYNC_FDATASYNC: the FSYNC request comes
	// from fdatasync(2).
	fsyncFdatasync = 1
	// fallocKeepSize is FALLOC_FL_KEEP_SIZE.
	fallocKeepSize = 1
)

// Options configure a mount. The zero value is the default.
type Options struct {
	// Debug logs every FUSE request and reply.
	Debug bool
}

// Stats describes the pending (volatile) state of a mount and what made
// data durable so far.
type Stats struct {
	// PendingBytes is the size of the dirty pages held in memory.
	PendingBytes int64
	// PendingFiles is the number of files with unsynced contents or size.
	PendingFiles int
	// Fsyncs counts fsync and fdatasync calls on files, whether or not
	// anything was pending.
	Fsyncs int64
	// Writes counts write requests received.
	Writes int64
}

// FS is one lazyfs mount.
type FS struct {
	mountpoint string
	backing    string
	server     *fuse.Server
	conn       uint64 // FUSE connection id

	fsyncs atomic.Int64
	writes atomic.Int64

	mu      sync.Mutex
	files   map[uint64]*fileState // by backing inode number
	crashed bool
	closed  bool
}

// Mount mounts a lazyfs at mountpoint (which must exist) that passes
// through to the directory backing. opts may be nil.
func Mount(mountpoint, backing string, opts *Options) (*FS, error) {
	if opts == nil {
		opts = &Options{}
	}
	backing, err := filepath.Abs(backing)
	if err != nil {
		return nil, err
	}
	mountpoint, err = filepath.Abs(mountpoint)
	if err != nil {
		return nil, err
	}
	var st syscall.Stat_t
	if err := syscall.Stat(backing, &st); err != nil {
		return nil, fmt.Errorf("lazyfs: backing dir: %w", err)
	}
	if st.Mode&syscall.S_IFMT != syscall.S_IFDIR {
		return nil, fmt.Errorf("lazyfs: backing %s is not a directory", backing)
	}
	l := &FS{
		mountpoint: mountpoint,
		backing:    backing,
		files:      make(map[uint64]*fileState),
	}
	root := &fs.LoopbackRoot{Path: backing, Dev: uint64(st.Dev)}
	rootNode := &node{LoopbackNode: &fs.LoopbackNode{RootData: root}, lfs: l}
	root.RootNode = rootNode

	// Every change goes through this mount, so the kernel's caches stay
	// right by themselves: attributes and entries may be cached briefly,
	// and data need not be invalidated when the backing mtime moves.
	sec := time.Second
	zero := time.Duration(0)
	server, err := fs.Mount(mountpoint, rootNode, &fs.Options{
		EntryTimeout:    &sec,
		AttrTimeout:     &sec,
		NegativeTimeout: &zero,
		MountOptions: fuse.MountOptions{
			// No fusermount: mount(2) directly, and fail rather than
			// look for the helper.
			DirectMountStrict:        true,
			AllowOther:               true,
			FsName:                   "lazyfs",
			Name:                     "lazyfs",
			ExplicitDataCacheControl: true,
			Debug:                    opts.Debug,
		},
	})
	if err != nil {
		return nil, fmt.Errorf("lazyfs: mount %s: %w", mountpoint, err)
	}
	l.server = server
	// The connection is named in fusectl by the kernel's device number of
	// the mount.
	var mst syscall.Stat_t
	if err := syscall.Stat(mountpoint, &mst); err != nil {
		_ = l.unmount()
		return nil, fmt.Errorf("lazyfs: stat %s: %w", mountpoint, err)
	}
	major := (mst.Dev>>8)&0xfff | (mst.Dev>>32)&^0xfff
	minor := mst.Dev&0xff | (mst.Dev>>12)&^0xff
	l.conn = major<<20 | minor
	return l, nil
}

// Mountpoint returns the directory where the filesystem is mounted.
func (l *FS) Mountpoint() string { return l.mountpoint }

// Backing returns the backing directory.
func (l *FS) Backing() string { return l.backing }

// Stats reports the pending state and counters.
func (l *FS) Stats() Stats {
	s := Stats{Fsyncs: l.fsyncs.Load(), Writes: l.writes.Load()}
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, f := range l.files {
		f.mu.Lock()
		if f.dirty {
			s.PendingFiles++
			s.PendingBytes += int64(len(f.pages)) * pageSize
		}
		f.mu.Unlock()
	}
	return s
}

// ErrClosed is returned by Crash and Unmount on a mount that is already gone.
var ErrClosed = errors.New("lazyfs: not mounted")

// Crash simulates power loss: every write and size change not yet fsynced
// is discarded, then the filesystem is unmounted, which also drops the
// kernel's page cache of it. Processes using the mount must be dead. Calling
// Crash again, or after Unmount, returns ErrClosed.
func (l *FS) Crash() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return ErrClosed
	}
	l.closed = true
	l.crashed = true
	for ino, f := range l.files {
		f.mu.Lock()
		f.discard()
		f.mu.Unlock()
		delete(l.files, ino)
	}
	l.mu.Unlock()
	return l.unmount()
}

// Unmount makes every pending write durable, as a clean shutdown would,
// and unmounts. Processes using the mount must be dead. Calling it again,
// or after Crash, returns ErrClosed.
func (l *FS) Unmount() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return ErrClosed
	}
	l.closed = true
	errs := l.flushAllLocked()
	l.mu.Unlock()
	if err := l.unmount(); err != nil {
		return err
	}
	// Nothing can write any more; store what came in meanwhile and let go
	// of the backing files.
	l.mu.Lock()
	defer l.mu.Unlock()
	errs = append(errs, l.flushAllLocked()...)
	for ino, f := range l.files {
		f.mu.Lock()
		f.discard()
		f.mu.Unlock()
		delete(l.files, ino)
	}
	return errors.Join(errs...)
}

func (l *FS) flushAllLocked() []error {
	var errs []error
	for _, f := range l.files {
		f.mu.Lock()
		if errno := f.flush(false); errno != 0 {
			errs = append(errs, fmt.Errorf("lazyfs: flush inode %d: %w", f.ino, errno))
		}
		f.mu.Unlock()
	}
	return errs
}

// unmount detaches the mount and waits for the server to stop. It retries
// while the kernel still reports the mount busy (the descriptors of a
// killed process are released asynchronously). If it stays busy, it
// detaches the mount lazily and aborts the FUSE connection, so that the
// processes still using it get errors instead of waiting for a server
// that will be gone (a process that exits with files open on a mount it
// serves itself would otherwise hang forever in its exit).
func (l *FS) unmount() error {
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := syscall.Unmount(l.mountpoint, 0)
		if err == nil {
			break
		}
		if err == syscall.EINTR {
			continue
		}
		if err != syscall.EBUSY || time.Now().After(deadline) {
			derr := syscall.Unmount(l.mountpoint, syscall.MNT_DETACH)
			aerr := l.abort()
			if aerr == nil {
				l.server.Wait()
			}
			return fmt.Errorf("lazyfs: unmount %s: %w (lazy detach: %v, abort: %v); was a process still using it?", l.mountpoint, err, derr, aerr)
		}
		time.Sleep(10 * time.Millisecond)
	}
	l.server.Wait()
	return nil
}

// fusectl is where the kernel lists FUSE connections.
const fusectl = "/sys/fs/fuse/connections"

// abort aborts the FUSE connection of the mount through fusectl, mounting
// fusectl first if nothing has.
func (l *FS) abort() error {
	dir := filepath.Join(fusectl, strconv.FormatUint(l.conn, 10))
	if _, err := os.Stat(dir); err != nil {
		if err := syscall.Mount("fusectl", fusectl, "fusectl", 0, ""); err != nil && err != syscall.EBUSY {
			return fmt.Errorf("mount fusectl: %w", err)
		}
	}
	return os.WriteFile(filepath.Join(dir, "abort"), []byte("1"), 0)
}

// acquire returns the state of the backing file open at fd, taking
// ownership of fd, with one more open reference.
func (l *FS) acquire(fd int) (*fileState, syscall.Errno) {
	var st syscall.Stat_t
	if err := syscall.Fstat(fd, &st); err != nil {
		syscall.Close(fd)
		return nil, fs.ToErrno(err)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.crashed {
		syscall.Close(fd)
		return nil, syscall.EIO
	}
	f := l.files[st.Ino]
	if f != nil {
		syscall.Close(fd)
	} else {
		f = &fileState{
			ino:   st.Ino,
			fd:    fd,
			size:  st.Size,
			limit: st.Size,
			pages: make(map[int64][]byte),
		}
		l.files[st.Ino] = f
	}
	f.opens++
	return f, 0
}

// acquirePath opens the backing file at path and acquires its state.
func (l *FS) acquirePath(path string) (*fileState, syscall.Errno) {
	fd, err := openBacking(path, 0, 0)
	if err != nil {
		return nil, fs.ToErrno(err)
	}
	return l.acquire(fd)
}

// openBacking opens a backing file for reading and writing whatever mode
// the caller asked for (the kernel enforces the caller's mode on its own
// descriptor): the state's descriptor must serve every later write and
// flush. It falls back to read-only where writing is refused.
func openBacking(path string, extra int, mode uint32) (int, error) {
	for {
		fd, err := syscall.Open(path, syscall.O_RDWR|syscall.O_CLOEXEC|syscall.O_NOFOLLOW|extra, mode)
		if err == syscall.EINTR {
			continue
		}
		if err == syscall.EACCES || err == syscall.EPERM || err == syscall.EROFS || err == syscall.ETXTBSY {
			fd, err = syscall.Open(path, syscall.O_RDONLY|syscall.O_CLOEXEC|syscall.O_NOFOLLOW|extra, mode)
		}
		return fd, err
	}
}

// release drops one open reference. The state is forgotten once nothing
// has it open and it holds nothing pending, or its file has no name left.
func (l *FS) release(f *fileState) {
	l.mu.Lock()
	defer l.mu.Unlock()
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.gone {
		return
	}
	f.opens--
	l.dropIfIdleLocked(f)
}

// checkUnlinked forgets the state of inode ino if its last name is gone
// and nothing has it open: its pending data can never be read again.
func (l *FS) checkUnlinked(ino uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	f := l.files[ino]
	if f == nil {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	l.dropIfIdleLocked(f)
}

// dropIfIdleLocked needs l.mu and f.mu.
func (l *FS) dropIfIdleLocked(f *fileState) {
	if f.gone || f.opens > 0 {
		return
	}
	if f.dirty {
		var st syscall.Stat_t
		if err := syscall.Fstat(f.fd, &st); err != nil || st.Nlink > 0 {
			return
		}
	}
	f.discard()
	delete(l.files, f.ino)
}

// fixAttr replaces the size and times the backing file reports with the
// pending ones of inode a.Ino, if it has any.
func (l *FS) fixAttr(a *fuse.Attr) {
	if a.Mode&syscall.S_IFMT != syscall.S_IFREG {
		return
	}
	l.mu.Lock()
	f := l.files[a.Ino]
	if f != nil {
		f.mu.Lock()
		f.fixAttrLocked(a)
		f.mu.Unlock()
	}
	l.mu.Unlock()
}

// fileState is the pending state of one backing inode. It holds its own
// descriptor of the backing file, which keeps the inode number from being
// reused while the state exists.
type fileState struct {
	ino uint64

	mu    sync.Mutex
	fd    int
	opens int
	gone  bool // discarded: fd is closed
	dirty bool // something differs from the backing file

	// size is the logical size. limit is how much of the backing file is
	// still valid: a pending truncation below the backing size hides the
	// rest. limit <= size always, and page bytes past size are zero.
	size  int64
	limit int64
	pages map[int64][]byte // page index -> full page
	mtime time.Time        // of the last pending change
}

func (f *fileState) discard() {
	if f.gone {
		return
	}
	f.gone = true
	f.pages = nil
	f.dirty = false
	syscall.Close(f.fd)
}

func (f *fileState) fixAttrLocked(a *fuse.Attr) {
	if f.gone || !f.dirty {
		return
	}
	a.Size = uint64(f.size)
	a.Blocks = (a.Size + 511) / 512
	if sec := uint64(f.mtime.Unix()); sec > a.Mtime || (sec == a.Mtime && uint32(f.mtime.Nanosecond()) > a.Mtimensec) {
		a.Mtime, a.Mtimensec = sec, uint32(f.mtime.Nanosecond())
		a.Ctime, a.Ctimensec = a.Mtime, a.Mtimensec
	}
}

// preadFull reads len(p) bytes at off, leaving zeros past the end of file.
func preadFull(fd int, p []byte, off int64) error {
	for len(p) > 0 {
		n, err := syscall.Pread(fd, p, off)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		if n == 0 {
			return nil
		}
		p = p[n:]
		off += int64(n)
	}
	return nil
}

func pwriteFull(fd int, p []byte, off int64) error {
	for len(p) > 0 {
		n, err := syscall.Pwrite(fd, p, off)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		p = p[n:]
		off += int64(n)
	}
	return nil
}

func (f *fileState) readAt(p []byte, off int64) (int, syscall.Errno) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.gone {
		return 0, syscall.EIO
	}
	if off >= f.size {
		return 0, 0
	}
	if rem := f.size - off; int64(len(p)) > rem {
		p = p[:rem]
	}
	clear(p)
	if off < f.limit {
		if err := preadFull(f.fd, p[:min(int64(len(p)), f.limit-off)], off); err != nil {
			return 0, fs.ToErrno(err)
		}
	}
	end := off + int64(len(p))
	if len(f.pages) > 0 {
		for idx := off / pageSize; idx*pageSize < end; idx++ {
			pg := f.pages[idx]
			if pg == nil {
				continue
			}
			start := idx * pageSize
			lo, hi := max(off, start), min(end, start+pageSize)
			copy(p[lo-off:hi-off], pg[lo-start:hi-start])
		}
	}
	return len(p), 0
}

func (f *fileState) writeAt(data []byte, off int64) (int, syscall.Errno) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.gone {
		return 0, syscall.EIO
	}
	end := off + int64(len(data))
	for cur := off; cur < end; {
		idx := cur / pageSize
		start := idx * pageSize
		hi := min(end, start+pageSize)
		pg := f.pages[idx]
		if pg == nil {
			pg = make([]byte, pageSize)
			// Fill from the backing file unless the write covers the page.
			if start < f.limit && (cur > start || hi < start+pageSize) {
				if err := preadFull(f.fd, pg[:min(pageSize, f.limit-start)], start); err != nil {
					return 0, fs.ToErrno(err)
				}
			}
			f.pages[idx] = pg
		}
		copy(pg[cur-start:hi-start], data[cur-off:hi-off])
		cur = hi
	}
	if end > f.size {
		f.size = end
	}
	f.touchLocked()
	return len(data), 0
}

func (f *fileState) touchLocked() {
	f.dirty = true
	f.mtime = time.Now()
}

// truncate sets the pending size.
func (f *fileState) truncate(size int64) syscall.Errno {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.gone {
		return syscall.EIO
	}
	f.truncateLocked(size)
	return 0
}

func (f *fileState) truncateLocked(size int64) {
	if size < f.size {
		for idx := range f.pages {
			if idx*pageSize >= size {
				delete(f.pages, idx)
			}
		}
		if size%pageSize != 0 {
			if pg := f.pages[size/pageSize]; pg != nil {
				clear(pg[size%pageSize:])
			}
		}
		f.limit = min(f.limit, size)
	}
	f.size = size
	f.touchLocked()
}

// flush writes the overlay and pending size to the backing file. If sync,
// the backing file is then fsynced (fdatasynced if datasync).
func (f *fileState) flush(datasync bool) syscall.Errno {
	if f.gone {
		return syscall.EIO
	}
	if !f.dirty {
		return 0
	}
	var st syscall.Stat_t
	if err := syscall.Fstat(f.fd, &st); err != nil {
		return fs.ToErrno(err)
	}
	// A pending truncation below the backing size: cut first, so the
	// bytes between limit and size that no page covers read as zeros.
	if f.limit < st.Size {
		if err := syscall.Ftruncate(f.fd, f.limit); err != nil {
			return fs.ToErrno(err)
		}
	}
	idxs := make([]int64, 0, len(f.pages))
	for idx := range f.pages {
		idxs = append(idxs, idx)
	}
	sort.Slice(idxs, func(i, j int) bool { return idxs[i] < idxs[j] })
	// Write runs of consecutive pages with one call each.
	var run [][]byte
	var runStart int64
	writeRun := func() error {
		if len(run) == 0 {
			return nil
		}
		buf := make([]byte, 0, len(run)*pageSize)
		for _, pg := range run {
			buf = append(buf, pg...)
		}
		if lim := f.size - runStart; int64(len(buf)) > lim {
			buf = buf[:lim]
		}
		run = run[:0]
		return pwriteFull(f.fd, buf, runStart)
	}
	for _, idx := range idxs {
		start := idx * pageSize
		if start >= f.size {
			continue
		}
		if len(run) > 0 && runStart+int64(len(run))*pageSize != start {
			if err := writeRun(); err != nil {
				return fs.ToErrno(err)
			}
		}
		if len(run) == 0 {
			runStart = start
		}
		run = append(run, f.pages[idx])
	}
	if err := writeRun(); err != nil {
		return fs.ToErrno(err)
	}
	if err := syscall.Ftruncate(f.fd, f.size); err != nil {
		return fs.ToErrno(err)
	}
	var err error
	if datasync {
		err = syscall.Fdatasync(f.fd)
	} else {
		err = syscall.Fsync(f.fd)
	}
	if err != nil {
		return fs.ToErrno(err)
	}
	clear(f.pages)
	f.limit = f.size
	f.dirty = false
	return 0
}

// node is a loopback node whose regular files go through the overlay.
type node struct {
	*fs.LoopbackNode
	lfs *FS
}

var (
	_ fs.NodeWrapChilder    = (*node)(nil)
	_ fs.NodeLookuper       = (*node)(nil)
	_ fs.NodeOpener         = (*node)(nil)
	_ fs.NodeCreater        = (*node)(nil)
	_ fs.NodeGetattrer      = (*node)(nil)
	_ fs.NodeSetattrer      = (*node)(nil)
	_ fs.NodeLinker         = (*node)(nil)
	_ fs.NodeUnlinker       = (*node)(nil)
	_ fs.NodeRenamer        = (*node)(nil)
	_ fs.NodeStatxer        = (*node)(nil)
	_ fs.NodeTmpfiler       = (*node)(nil)
	_ fs.NodeCopyFileRanger = (*node)(nil)
)

// WrapChild makes every node created below the root a lazyfs node.
func (n *node) WrapChild(ctx context.Context, ops fs.InodeEmbedder) fs.InodeEmbedder {
	return &node{LoopbackNode: ops.(*fs.LoopbackNode), lfs: n.lfs}
}

// backingPath is the node's path in the backing directory.
func (n *node) backingPath() string {
	return filepath.Join(n.RootData.Path, n.Path(nil))
}

func (n *node) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	ch, errno := n.LoopbackNode.Lookup(ctx, name, out)
	if errno == 0 {
		n.lfs.fixAttr(&out.Attr)
	}
	return ch, errno
}

func (n *node) Link(ctx context.Context, target fs.InodeEmbedder, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	ch, errno := n.LoopbackNode.Link(ctx, target, name, out)
	if errno == 0 {
		n.lfs.fixAttr(&out.Attr)
	}
	return ch, errno
}

func (n *node) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	f, errno := n.lfs.acquirePath(n.backingPath())
	if errno != 0 {
		return nil, 0, errno
	}
	h := &handle{lfs: n.lfs, f: f}
	if flags&syscall.O_TRUNC != 0 {
		if errno := f.truncate(0); errno != 0 {
			h.Release(ctx)
			return nil, 0, errno
		}
	}
	return h, 0, 0
}

func (n *node) Create(ctx context.Context, name string, flags uint32, mode uint32, out *fuse.EntryOut) (*fs.Inode, fs.FileHandle, uint32, syscall.Errno) {
	p := filepath.Join(n.backingPath(), name)
	fd, err := openBacking(p, syscall.O_CREAT|int(flags&syscall.O_EXCL), mode&07777)
	if err != nil {
		return nil, nil, 0, fs.ToErrno(err)
	}
	if caller, ok := fuse.FromContext(ctx); ok && os.Getuid() == 0 {
		_ = syscall.Fchown(fd, int(caller.Uid), int(caller.Gid))
	}
	f, errno := n.lfs.acquire(fd)
	if errno != 0 {
		return nil, nil, 0, errno
	}
	h := &handle{lfs: n.lfs, f: f}
	if flags&syscall.O_TRUNC != 0 {
		if errno := f.truncate(0); errno != 0 {
			h.Release(ctx)
			return nil, nil, 0, errno
		}
	}
	ch, errno := n.Lookup(ctx, name, out)
	if errno != 0 {
		h.Release(ctx)
		return nil, nil, 0, errno
	}
	return ch, h, 0, 0
}

func (n *node) Getattr(ctx context.Context, fh fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	if h, ok := fh.(*handle); ok {
		h.f.mu.Lock()
		defer h.f.mu.Unlock()
		if h.f.gone {
			return syscall.EIO
		}
		var st syscall.Stat_t
		if err := syscall.Fstat(h.f.fd, &st); err != nil {
			return fs.ToErrno(err)
		}
		out.FromStat(&st)
		h.f.fixAttrLocked(&out.Attr)
		return 0
	}
	if errno := n.LoopbackNode.Getattr(ctx, nil, out); errno != 0 {
		return errno
	}
	n.lfs.fixAttr(&out.Attr)
	return 0
}

func (n *node) Setattr(ctx context.Context, fh fs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	if sz, ok := in.GetSize(); ok {
		if h, ok := fh.(*handle); ok {
			if errno := h.f.truncate(int64(sz)); errno != 0 {
				return errno
			}
		} else {
			f, errno := n.lfs.acquirePath(n.backingPath())
			if errno != 0 {
				return errno
			}
			errno = f.truncate(int64(sz))
			n.lfs.release(f)
			if errno != 0 {
				return errno
			}
		}
		in.Valid &^= fuse.FATTR_SIZE
	}
	const others = fuse.FATTR_MODE | fuse.FATTR_UID | fuse.FATTR_GID |
		fuse.FATTR_ATIME | fuse.FATTR_MTIME | fuse.FATTR_ATIME_NOW | fuse.FATTR_MTIME_NOW
	if in.Valid&others != 0 {
		if errno := n.LoopbackNode.Setattr(ctx, nil, in, out); errno != 0 {
			return errno
		}
	}
	return n.Getattr(ctx, fh, out)
}

func (n *node) Unlink(ctx context.Context, name string) syscall.Errno {
	var st syscall.Stat_t
	victim := syscall.Lstat(filepath.Join(n.backingPath(), name), &st) == nil
	errno := n.LoopbackNode.Unlink(ctx, name)
	if errno == 0 && victim {
		n.lfs.checkUnlinked(st.Ino)
	}
	return errno
}

func (n *node) Rename(ctx context.Context, name string, newParent fs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
	var st syscall.Stat_t
	victim := false
	if np, ok := newParent.(*node); ok && flags&fs.RENAME_EXCHANGE == 0 {
		victim = syscall.Lstat(filepath.Join(np.backingPath(), newName), &st) == nil
	}
	errno := n.LoopbackNode.Rename(ctx, name, newParent, newName, flags)
	if errno == 0 && victim {
		n.lfs.checkUnlinked(st.Ino)
	}
	return errno
}

// Statx is refused so that the kernel asks Getattr, which knows the
// pending size.
func (n *node) Statx(ctx context.Context, f fs.FileHandle, flags uint32, mask uint32, out *fuse.StatxOut) syscall.Errno {
	return syscall.ENOSYS
}

// Tmpfile is refused: an unnamed file would bypass the overlay.
func (n *node) Tmpfile(ctx context.Context, flags uint32, mode uint32, out *fuse.EntryOut) (*fs.Inode, fs.FileHandle, uint32, syscall.Errno) {
	return nil, nil, 0, syscall.EOPNOTSUPP
}

// CopyFileRange is refused so that callers fall back to read and write.
func (n *node) CopyFileRange(ctx context.Context, fhIn fs.FileHandle, offIn uint64, out *fs.Inode, fhOut fs.FileHandle, offOut uint64, length uint64, flags uint64) (uint32, syscall.Errno) {
	return 0, syscall.ENOSYS
}

// handle is an open regular file.
type handle struct {
	lfs      *FS
	f        *fileState
	released atomic.Bool
}

var (
	_ fs.FileReader    = (*handle)(nil)
	_ fs.FileWriter    = (*handle)(nil)
	_ fs.FileFsyncer   = (*handle)(nil)
	_ fs.FileFlusher   = (*handle)(nil)
	_ fs.FileReleaser  = (*handle)(nil)
	_ fs.FileAllocater = (*handle)(nil)
)

func (h *handle) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	n, errno := h.f.readAt(dest, off)
	if errno != 0 {
		return nil, errno
	}
	return fuse.ReadResultData(dest[:n]), 0
}

func (h *handle) Write(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	h.lfs.writes.Add(1)
	n, errno := h.f.writeAt(data, off)
	return uint32(n), errno
}

// Fsync makes the inode's pending contents and size durable.
func (h *handle) Fsync(ctx context.Context, flags uint32) syscall.Errno {
	h.lfs.fsyncs.Add(1)
	h.f.mu.Lock()
	defer h.f.mu.Unlock()
	return h.f.flush(flags&fsyncFdatasync != 0)
}

// Flush (on close) makes nothing durable.
func (h *handle) Flush(ctx context.Context) syscall.Errno { return 0 }

func (h *handle) Release(ctx context.Context) syscall.Errno {
	if h.released.Swap(true) {
		return 0
	}
	h.lfs.release(h.f)
	return 0
}

// Allocate supports plain allocation (which may grow the pending size) and
// FALLOC_FL_KEEP_SIZE (a no-op: allocation is not modelled).
func (h *handle) Allocate(ctx context.Context, off uint64, size uint64, mode uint32) syscall.Errno {
	switch mode {
	case 0:
		h.f.mu.Lock()
		defer h.f.mu.Unlock()
		if h.f.gone {
			return syscall.EIO
		}
		if end := int64(off + size); end > h.f.size {
			h.f.truncateLocked(end)
		}
		return 0
	case fallocKeepSize:
		return 0
	default:
		return syscall.EOPNOTSUPP
	}
}

//! The Linux specifics of the data plane, in one place: opening blobs relative to a
//! directory descriptor without allocating, and the zero-copy path
//! `splice(file -> pipe -> socket)`. Readiness waits go through the io_uring runtime
//! (see `server`); the data itself never enters user space on the plain path.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::hash::BlobHash;

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn cvt_size(ret: libc::ssize_t) -> io::Result<usize> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as usize)
    }
}

/// Opens `<hash><suffix>` inside the directory `dir`, read-only, and returns it with
/// its size; `Ok(None)` if it does not exist. The path is built on the stack.
pub fn open_at(dir: RawFd, hash: &BlobHash, suffix: &[u8]) -> io::Result<Option<(OwnedFd, u64)>> {
    let mut name = [0u8; 80];
    let hex = hash.to_hex();
    if suffix.len() > name.len() - hex.len() - 1 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "suffix too long",
        ));
    }
    name[..64].copy_from_slice(&hex);
    name[64..64 + suffix.len()].copy_from_slice(suffix);
    // name[64 + suffix.len()] is already 0: the C string's terminator.
    // SAFETY: `name` is NUL-terminated (zeroed buffer, at least one byte left after
    // the copied hex and suffix) and lives across the call; `dir` is a descriptor.
    let fd = unsafe { libc::openat(dir, name.as_ptr().cast(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        let err = io::Error::last_os_error();
        return if err.kind() == io::ErrorKind::NotFound {
            Ok(None)
        } else {
            Err(err)
        };
    }
    // SAFETY: `fd` was just returned by openat and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: an all-zero `stat` is a valid value of this plain C struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is open and `st` is a writable stat buffer.
    cvt(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) })?;
    Ok(Some((fd, st.st_size as u64)))
}

/// Reads exactly `buf.len()` bytes at `offset` (pread loop).
pub fn read_exact_at(fd: RawFd, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
    while !buf.is_empty() {
        // SAFETY: `buf` is a valid writable region of `buf.len()` bytes.
        let n = cvt_size(unsafe {
            libc::pread(
                fd,
                buf.as_mut_ptr().cast(),
                buf.len(),
                offset as libc::off_t,
            )
        });
        match n {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Gives the free memory the allocator holds back to the kernel (glibc's
/// `malloc_trim`: the free pages of every arena, not only those at each heap's
/// top, which are all that `free` returns by itself). Takes each arena's lock
/// in turn, so it is called off the cores, and only after they freed spare
/// buffers.
pub fn trim_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim has no preconditions; it locks each arena itself.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// A pipe used as the in-kernel buffer between a file and a socket.
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    capacity: usize,
}

impl Pipe {
    /// Makes a non-blocking pipe and asks for `want_bytes` of capacity.
    pub fn new(want_bytes: usize) -> io::Result<Pipe> {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 writes.
        cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) })?;
        // SAFETY: pipe2 succeeded, so both descriptors are open and ours alone.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // Larger pipes mean fewer splice calls per response. The kernel may refuse
        // (fs.pipe-max-size, or the per-user soft limit); then the default stays.
        // SAFETY: fcntl on an open descriptor with integer arguments.
        unsafe {
            libc::fcntl(
                write.as_raw_fd(),
                libc::F_SETPIPE_SZ,
                want_bytes as libc::c_int,
            )
        };
        // SAFETY: as above.
        let capacity = cvt(unsafe { libc::fcntl(write.as_raw_fd(), libc::F_GETPIPE_SZ) })? as usize;
        Ok(Pipe {
            read,
            write,
            capacity,
        })
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Copies a few bytes (a response head) into the pipe, ahead of the body.
    pub fn write(&self, bytes: &[u8]) -> io::Result<usize> {
        // SAFETY: `bytes` is a valid readable region.
        cvt_size(unsafe { libc::write(self.write.as_raw_fd(), bytes.as_ptr().cast(), bytes.len()) })
    }

    /// Moves up to `len` bytes of `file` at `*offset` into the pipe, by page
    /// reference; advances `*offset`. `WouldBlock` when the pipe is full.
    pub fn fill_from_file(&self, file: RawFd, offset: &mut u64, len: usize) -> io::Result<usize> {
        let mut off = *offset as libc::loff_t;
        // SAFETY: `off` is a valid loff_t the kernel updates; the descriptors are open.
        let n = cvt_size(unsafe {
            libc::splice(
                file,
                &mut off,
                self.write.as_raw_fd(),
                std::ptr::null_mut(),
                len,
                libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
            )
        })?;
        *offset = off as u64;
        Ok(n)
    }

    /// Moves up to `len` bytes from the pipe to `socket` without blocking
    /// (`WouldBlock` when the socket buffer is full). `more`: further data follows.
    pub fn drain_to_socket(&self, socket: RawFd, len: usize, more: bool) -> io::Result<usize> {
        let mut flags = libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK;
        if more {
            flags |= libc::SPLICE_F_MORE;
        }
        // SAFETY: both descriptors are open; no offsets are passed for pipe or socket.
        cvt_size(unsafe {
            libc::splice(
                self.read.as_raw_fd(),
                std::ptr::null_mut(),
                socket,
                std::ptr::null_mut(),
                len,
                flags,
            )
        })
    }
}

/// Best-effort send that never blocks (for a canned refusal on an overloaded core).
pub fn send_nowait(socket: RawFd, bytes: &[u8]) {
    // SAFETY: `bytes` is a valid readable region; failure is ignored by design.
    unsafe {
        libc::send(
            socket,
            bytes.as_ptr().cast(),
            bytes.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
}

/// Shuts a socket down both ways (an idle connection's timeout): a pending poll
/// on it wakes, and its reads see the end. Failure (already closed) is ignored.
pub fn shutdown(socket: RawFd) {
    // SAFETY: shutdown(2) takes any descriptor and only acts on sockets.
    unsafe { libc::shutdown(socket, libc::SHUT_RDWR) };
}

/// An epoll set: where a core keeps the idle keep-alive connections it holds
/// no task for (see `server::Held`). The kernel keeps each socket's entry, so
/// such a connection costs user space only its slot in the core's table.
pub struct Epoll(OwnedFd);

/// An epoll event as the kernel writes it (`data` is the slot the connection
/// was registered with).
pub type EpollEvent = libc::epoll_event;

impl Epoll {
    pub fn new() -> io::Result<Epoll> {
        // SAFETY: epoll_create1 takes only flags and returns a new descriptor.
        let fd = cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        // SAFETY: `fd` was just created and is owned by nothing else.
        Ok(Epoll(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// A second descriptor for the same set (to poll it for readiness).
    pub fn duplicate(&self) -> io::Result<OwnedFd> {
        self.0.try_clone()
    }

    /// Waits for `socket` to be readable (or hung up), once: the entry is
    /// disarmed when it fires and armed again by the next `watch` with
    /// `registered` true. `data` comes back in the event.
    pub fn watch(&self, socket: RawFd, data: u64, registered: bool) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLONESHOT) as u32,
            u64: data,
        };
        let op = if registered {
            libc::EPOLL_CTL_MOD
        } else {
            libc::EPOLL_CTL_ADD
        };
        // SAFETY: `ev` is a valid event for the call's duration; a bad
        // descriptor is an error, not undefined behaviour.
        cvt(unsafe { libc::epoll_ctl(self.0.as_raw_fd(), op, socket, &mut ev) }).map(|_| ())
    }

    /// Adds `fd` for as long as it is open, reported whenever it is readable.
    pub fn watch_always(&self, fd: RawFd, data: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: data,
        };
        // SAFETY: as in `watch`.
        cvt(unsafe { libc::epoll_ctl(self.0.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) })
            .map(|_| ())
    }

    /// The events ready now, without waiting, into `events`; how many.
    pub fn ready(&self, events: &mut [EpollEvent]) -> usize {
        let max = events.len().min(i32::MAX as usize) as i32;
        // SAFETY: `events` is writable for `max` entries; timeout 0 never blocks.
        let n = unsafe { libc::epoll_wait(self.0.as_raw_fd(), events.as_mut_ptr(), max, 0) };
        n.max(0) as usize
    }
}

/// An eventfd: a counter another party can make readable (`signal`).
pub struct EventFd(OwnedFd);

impl EventFd {
    pub fn new() -> io::Result<EventFd> {
        // SAFETY: eventfd takes an initial value and flags, and returns a new descriptor.
        let fd = cvt(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) })?;
        // SAFETY: `fd` was just created and is owned by nothing else.
        Ok(EventFd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    pub fn fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }

    /// Makes it readable (until read, which nothing here does).
    pub fn signal(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a valid u64; failure (the counter
        // full) leaves it readable anyway.
        unsafe { libc::write(self.0.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }
}

/// Closes a descriptor the caller owns and drops (an idle connection held in
/// an epoll set). Closing it also takes it out of the set.
pub fn close(fd: RawFd) {
    // SAFETY: the caller owns `fd` and never uses it again.
    unsafe { libc::close(fd) };
}

/// Raises the soft open-file limit to the hard limit: every connection costs a
/// socket and, while it streams a blob, a file and a pipe (three descriptors).
pub fn raise_fd_limit() -> io::Result<u64> {
    // SAFETY: an all-zero rlimit is valid, and getrlimit fills it.
    let mut lim: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: `lim` is a valid rlimit buffer.
    cvt(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) })?;
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: `lim` holds values the kernel just gave us.
        cvt(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) })?;
    }
    Ok(lim.rlim_cur)
}

/// UDP `SOL_UDP` socket options (linux/udp.h); not in every libc release.
const UDP_SEGMENT: libc::c_int = 103;
const UDP_GRO: libc::c_int = 104;

/// Asks the kernel to coalesce received datagrams of one flow (GRO). Returns false
/// where the kernel does not support it; receiving still works, one datagram a call.
pub fn enable_udp_gro(fd: RawFd) -> bool {
    let on: libc::c_int = 1;
    // SAFETY: setsockopt with a valid int option value of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_UDP,
            UDP_GRO,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    rc == 0
}

fn sockaddr_to_std(storage: &libc::sockaddr_storage) -> Option<std::net::SocketAddr> {
    match storage.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the family says this storage holds a sockaddr_in.
            let a: &libc::sockaddr_in =
                unsafe { &*(storage as *const _ as *const libc::sockaddr_in) };
            let ip = std::net::Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Some(std::net::SocketAddr::from((ip, u16::from_be(a.sin_port))))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this storage holds a sockaddr_in6.
            let a: &libc::sockaddr_in6 =
                unsafe { &*(storage as *const _ as *const libc::sockaddr_in6) };
            let ip = std::net::Ipv6Addr::from(a.sin6_addr.s6_addr);
            Some(std::net::SocketAddr::from((ip, u16::from_be(a.sin6_port))))
        }
        _ => None,
    }
}

fn std_to_sockaddr(addr: &std::net::SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: an all-zero sockaddr_storage is valid.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    match addr {
        std::net::SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large enough and aligned for sockaddr_in.
            let sin: &mut libc::sockaddr_in =
                unsafe { &mut *(&mut storage as *mut _ as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr.s_addr = u32::from(*a.ip()).to_be();
            (
                storage,
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        }
        std::net::SocketAddr::V6(a) => {
            // SAFETY: sockaddr_storage is large enough and aligned for sockaddr_in6.
            let sin6: &mut libc::sockaddr_in6 =
                unsafe { &mut *(&mut storage as *mut _ as *mut libc::sockaddr_in6) };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_addr.s6_addr = a.ip().octets();
            sin6.sin6_scope_id = a.scope_id();
            (
                storage,
                std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
            )
        }
    }
}

/// Receives one (possibly GRO-coalesced) datagram without blocking. Returns the
/// bytes, the sender and the segment size (the size of each coalesced datagram but
/// the last); `WouldBlock` when nothing is queued.
pub fn recv_udp(fd: RawFd, buf: &mut [u8]) -> io::Result<(usize, std::net::SocketAddr, usize)> {
    // SAFETY: all-zero values are valid for these plain C structs.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut control = [0u64; 8]; // 64 bytes, aligned for cmsghdr
                                 // SAFETY: as above.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&mut storage as *mut libc::sockaddr_storage).cast();
    msg.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: msg points at live buffers of the sizes it states.
    let n = cvt_size(unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_DONTWAIT) })?;
    let mut segment = n;
    // SAFETY: walking the control buffer the kernel filled, with the CMSG macros.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_UDP && (*cmsg).cmsg_type == UDP_GRO {
                let mut seg: libc::c_int = 0;
                std::ptr::copy_nonoverlapping(
                    libc::CMSG_DATA(cmsg),
                    (&mut seg as *mut libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>(),
                );
                if seg > 0 {
                    segment = seg as usize;
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    let from =
        sockaddr_to_std(&storage).ok_or_else(|| io::Error::other("unknown address family"))?;
    Ok((n, from, segment))
}

/// Sends `buf` to `to` as datagrams of `segment` bytes each (the last may be
/// shorter) in one call, with UDP GSO when `segment < buf.len()`. Never blocks.
pub fn send_udp(
    fd: RawFd,
    buf: &[u8],
    segment: usize,
    to: &std::net::SocketAddr,
) -> io::Result<usize> {
    let (mut storage, len) = std_to_sockaddr(to);
    let mut iov = libc::iovec {
        iov_base: buf.as_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    let mut control = [0u64; 4];
    // SAFETY: an all-zero msghdr is valid.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&mut storage as *mut libc::sockaddr_storage).cast();
    msg.msg_namelen = len;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if segment < buf.len() {
        let seg = segment as u16;
        msg.msg_control = control.as_mut_ptr().cast();
        // SAFETY: CMSG_SPACE is a pure computation.
        msg.msg_controllen = unsafe { libc::CMSG_SPACE(std::mem::size_of::<u16>() as u32) } as _;
        // SAFETY: the control buffer has room for one cmsg carrying a u16.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_UDP;
            (*cmsg).cmsg_type = UDP_SEGMENT;
            (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<u16>() as u32) as _;
            std::ptr::copy_nonoverlapping(
                (&seg as *const u16).cast::<u8>(),
                libc::CMSG_DATA(cmsg),
                std::mem::size_of::<u16>(),
            );
        }
    }
    // SAFETY: msg points at live buffers of the sizes it states.
    cvt_size(unsafe { libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT) })
}

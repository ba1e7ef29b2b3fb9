/*
 * sock.h - socket helpers shared by both sides of the proxy (sock.cpp):
 * timeouts, non-blocking mode, whole writes that never raise SIGPIPE, peer
 * addresses as text and address lists.
 */
#ifndef PIBL_SOCK_H
#define PIBL_SOCK_H

#include <stddef.h>
#include <sys/socket.h>
#include <sys/uio.h>

/* Set SO_RCVTIMEO or SO_SNDTIMEO (opt) to ms milliseconds (at least 1). */
void sock_set_timeout(int fd, int opt, int ms);

/* Turn O_NONBLOCK on (1) or off (0). */
void sock_set_nonblocking(int fd, int on);

/*
 * Write every byte of the iovec array, retrying EINTR and partial writes.
 * The array is modified. flags adds to MSG_NOSIGNAL (MSG_MORE: more follows,
 * let the kernel merge it into the next segment). Blocks until done or the
 * send timeout. Returns 0, or -1 (peer gone or send timeout, errno set).
 */
int sock_writev(int fd, struct iovec *iov, int n, int flags);

/* sock_writev() without flags, and the same for one buffer. 0 or -1. */
int sock_writev_all(int fd, struct iovec *iov, int n);
int sock_write_all(int fd, const char *buf, size_t len);

/*
 * The printable address of a peer into ip (len >= 46), an IPv4-mapped IPv6
 * address shown as IPv4. Returns the port, or 0 for another family ("?").
 */
int sock_addr_text(const struct sockaddr_storage *addr, char *ip, size_t len);

/* 1 when the address ip (text) is in list, else 0. list holds addresses
 * and ranges "ADDR/BITS", IPv4 or IPv6, with blanks or commas between them,
 * as purge_allow and admin_allow are written. */
int sock_ip_listed(const char *list, const char *ip);

/* 0 when every member of list is an address or a range; -1 with the first
 * bad member named in why (config check). */
int sock_acl_check(const char *list, char *why, size_t why_len);

#endif

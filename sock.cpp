/*
 * sock.cpp - socket helpers: timeouts, non-blocking mode and whole writes
 * with MSG_NOSIGNAL, so that a peer that goes away costs an error return,
 * never a SIGPIPE; peer addresses as text, and the address lists
 * (addresses and ADDR/BITS ranges) of purge_allow and admin_allow. Knows
 * nothing of HTTP.
 */
#include "sock.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>

void
sock_set_timeout(int fd, int opt, int ms)
{
    struct timeval tv;

    if (ms < 1)
        ms = 1;
    tv.tv_sec = ms / 1000;
    tv.tv_usec = (ms % 1000) * 1000;
    setsockopt(fd, SOL_SOCKET, opt, &tv, sizeof tv);
}

int
sock_writev(int fd, struct iovec *iov, int n, int flags)
{
    while (n > 0) {
        struct msghdr msg;
        memset(&msg, 0, sizeof msg);
        msg.msg_iov = iov;
        msg.msg_iovlen = (size_t)n;
        ssize_t w = sendmsg(fd, &msg, MSG_NOSIGNAL | flags);
        if (w == -1) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        while (n > 0 && (size_t)w >= iov->iov_len) {
            w -= (ssize_t)iov->iov_len;
            iov++;
            n--;
        }
        if (n > 0) {
            iov->iov_base = (char *)iov->iov_base + w;
            iov->iov_len -= (size_t)w;
        }
    }
    return 0;
}

int
sock_writev_all(int fd, struct iovec *iov, int n)
{
    return sock_writev(fd, iov, n, 0);
}

int
sock_write_all(int fd, const char *buf, size_t len)
{
    struct iovec iov = { (void *)buf, len };

    return sock_writev_all(fd, &iov, 1);
}

void
sock_set_nonblocking(int fd, int on)
{
    int fl = fcntl(fd, F_GETFL);

    if (fl != -1)
        fcntl(fd, F_SETFL, on ? fl | O_NONBLOCK : fl & ~O_NONBLOCK);
}

int
sock_addr_text(const struct sockaddr_storage *addr, char *ip, size_t len)
{
    snprintf(ip, len, "?");
    if (addr->ss_family == AF_INET) {
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)addr;
        inet_ntop(AF_INET, &s4->sin_addr, ip, (socklen_t)len);
        return ntohs(s4->sin_port);
    }
    if (addr->ss_family == AF_INET6) {
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)addr;
        inet_ntop(AF_INET6, &s6->sin6_addr, ip, (socklen_t)len);
        if (strncmp(ip, "::ffff:", 7) == 0)
            memmove(ip, ip + 7, strlen(ip + 7) + 1);
        return ntohs(s6->sin6_port);
    }
    return 0;
}

/* One member of an address list: an address, or a range "ADDR/BITS".
 * Fills family, the address bytes (16) and the prefix length; 0 or -1. */
static int
acl_member(const char *t, size_t len, int *family, unsigned char addr[16], int *bits)
{
    char text[64];
    const char *slash = (const char *)memchr(t, '/', len);
    size_t alen = slash != NULL ? (size_t)(slash - t) : len;

    if (alen == 0 || alen >= sizeof text)
        return -1;
    memcpy(text, t, alen);
    text[alen] = '\0';
    if (inet_pton(AF_INET, text, addr) == 1)
        *family = AF_INET, *bits = 32;
    else if (inet_pton(AF_INET6, text, addr) == 1)
        *family = AF_INET6, *bits = 128;
    else
        return -1;
    if (slash != NULL) {
        size_t dl = len - alen - 1;
        int v = 0;
        if (dl == 0 || dl > 3)
            return -1;
        for (size_t i = 0; i < dl; i++) {
            if (slash[1 + i] < '0' || slash[1 + i] > '9')
                return -1;
            v = v * 10 + (slash[1 + i] - '0');
        }
        if (v > *bits)
            return -1;
        *bits = v;
    }
    /* ::ffff:a.b.c.d is how a dual-stack socket shows an IPv4 peer, and
     * peers are matched as IPv4 (sock_addr_text): so is such a member. */
    static const unsigned char mapped[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };
    if (*family == AF_INET6 && *bits >= 96 && memcmp(addr, mapped, sizeof mapped) == 0) {
        memmove(addr, addr + 12, 4);
        *family = AF_INET;
        *bits -= 96;
    }
    return 0;
}

/* Walk list's members: visit(arg, member, len) for each; stops at a nonzero return. */
static int
acl_walk(const char *list, int (*visit)(void *, const char *, size_t), void *arg)
{
    const char *p = list;

    while (*p != '\0') {
        while (*p == ' ' || *p == '\t' || *p == ',')
            p++;
        const char *t = p;
        while (*p != '\0' && *p != ' ' && *p != '\t' && *p != ',')
            p++;
        int rc = p > t ? visit(arg, t, (size_t)(p - t)) : 0;
        if (rc != 0)
            return rc;
    }
    return 0;
}

struct acl_check {
    char *why;
    size_t why_len;
};

static int
acl_check_one(void *arg, const char *t, size_t len)
{
    struct acl_check *k = (struct acl_check *)arg;
    unsigned char addr[16];
    int family, bits;

    if (acl_member(t, len, &family, addr, &bits) == 0)
        return 0;
    snprintf(k->why, k->why_len, "\"%.*s\" is not an IP address or an address range like 10.0.0.0/8 "
        "or fd00::/8", (int)(len > 64 ? 64 : len), t);
    return -1;
}

int
sock_acl_check(const char *list, char *why, size_t why_len)
{
    struct acl_check k = { why, why_len };

    return acl_walk(list, acl_check_one, &k) == 0 ? 0 : -1;
}

struct acl_match {
    int family;
    unsigned char addr[16];
};

static int
acl_match_one(void *arg, const char *t, size_t len)
{
    const struct acl_match *m = (const struct acl_match *)arg;
    unsigned char net[16];
    int family, bits;

    if (acl_member(t, len, &family, net, &bits) == -1 || family != m->family)
        return 0;
    int whole = bits / 8, rest = bits % 8;
    if (memcmp(net, m->addr, (size_t)whole) != 0)
        return 0;
    if (rest != 0) {
        unsigned char mask = (unsigned char)(0xff << (8 - rest));
        if ((net[whole] & mask) != (m->addr[whole] & mask))
            return 0;
    }
    return 1;
}

int
sock_ip_listed(const char *list, const char *ip)
{
    struct acl_match m;

    if (inet_pton(AF_INET, ip, m.addr) == 1)
        m.family = AF_INET;
    else if (inet_pton(AF_INET6, ip, m.addr) == 1)
        m.family = AF_INET6;
    else
        return 0;
    return acl_walk(list, acl_match_one, &m) == 1;
}

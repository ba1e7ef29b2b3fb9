/*
 * sock.cpp - socket helpers: timeouts, non-blocking mode and whole writes
 * with MSG_NOSIGNAL, so that a peer that goes away costs an error return,
 * never a SIGPIPE. Knows nothing of HTTP.
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

int
sock_ip_listed(const char *list, const char *ip)
{
    size_t ip_len = strlen(ip);
    const char *p = list;

    while (*p != '\0') {
        while (*p == ' ' || *p == '\t' || *p == ',')
            p++;
        const char *t = p;
        while (*p != '\0' && *p != ' ' && *p != '\t' && *p != ',')
            p++;
        if (p > t && (size_t)(p - t) == ip_len && memcmp(t, ip, ip_len) == 0)
            return 1;
    }
    return 0;
}

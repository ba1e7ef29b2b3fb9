/*
 * ws-load.c - benchmark helper for scripts/bench.sh: WebSocket load on a
 * proxy in front of pibl-origin's /_ws echo.
 *
 * Usage: ws-load PORT N SECS echo|idle
 *   Opens N connections to 127.0.0.1:PORT, sends each the opening handshake
 *   for /_ws, and waits for every 101 and the first message (the replica's
 *   hello). Then:
 *   echo  each connection sends a 32-byte masked text frame and waits for
 *         its echo, again and again, for SECS seconds (all connections at
 *         once, one poll() loop);
 *   idle  the connections stay open and silent for SECS seconds (or until
 *         SIGTERM), so the caller can read the proxy's memory.
 * Output (stdout, one line each, flushed):
 *   ws-load: ready open=N                        once every tunnel is open
 *   ws-load: done open=N round_trips=R secs=S    at the end
 * Exit 0, 1 when a tunnel could not be opened or broke, 2 on bad usage.
 *
 * It measures only its own round trips; the caller samples the proxy. It
 * talks to 127.0.0.1 only and never reconnects.
 * Limits: N <= MAX_CONNS, SECS <= MAX_SECS, IO_TIMEOUT_SECS for the
 * handshakes, FRAME_BYTES per message.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_CONNS        20000    /* connections one run may hold */
#define MAX_SECS         3600     /* longest run */
#define IO_TIMEOUT_SECS  20       /* for all the handshakes together */
#define FRAME_BYTES      32       /* payload of one echo message */
#define HEAD_BYTES       4096     /* a 101 head, plus the hello after it */

static volatile sig_atomic_t g_stop;

static void on_term(int sig)
{
    (void)sig;
    g_stop = 1;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* One tunnel: what it has read of its current answer. */
struct peer {
    int fd;
    size_t got;                    /* bytes of the awaited frame (or head) read */
    int open;                      /* 101 and hello seen */
    char buf[HEAD_BYTES];
};

/* The 101 head and the hello frame are both in p->buf[0..got): 1, else 0. */
static int handshake_done(const struct peer *p)
{
    const char *end = memmem(p->buf, p->got, "\r\n\r\n", 4);
    if (end == NULL)
        return 0;
    if (strncmp(p->buf, "HTTP/1.1 101 ", 13) != 0)
        return -1;
    size_t off = (size_t)(end + 4 - p->buf);
    if (p->got < off + 2)
        return 0;
    size_t len = (unsigned char)p->buf[off + 1] & 0x7f;
    return p->got >= off + 2 + len;
}

int main(int argc, char **argv)
{
    if (argc != 5 || (strcmp(argv[4], "echo") != 0 && strcmp(argv[4], "idle") != 0)) {
        fprintf(stderr, "usage: ws-load PORT N SECS echo|idle\n");
        return 2;
    }
    int port = atoi(argv[1]), n = atoi(argv[2]), secs = atoi(argv[3]);
    int echo = strcmp(argv[4], "echo") == 0;
    if (port <= 0 || port > 65535 || n <= 0 || n > MAX_CONNS || secs <= 0 || secs > MAX_SECS) {
        fprintf(stderr, "ws-load: bad PORT, N (1..%d) or SECS (1..%d)\n", MAX_CONNS, MAX_SECS);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    signal(SIGTERM, on_term);
    signal(SIGINT, on_term);

    struct peer *peers = calloc((size_t)n, sizeof *peers);
    struct pollfd *pfd = calloc((size_t)n, sizeof *pfd);
    if (peers == NULL || pfd == NULL)
        return 1;
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    static const char req_fmt[] = "GET /_ws HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n";
    char req[256];
    int req_len = snprintf(req, sizeof req, req_fmt, port);

    /* Open them all and send the handshakes (blocking connects are quick on loopback). */
    for (int i = 0; i < n; i++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        int one = 1;
        if (fd == -1 || connect(fd, (struct sockaddr *)&sa, sizeof sa) == -1) {
            fprintf(stderr, "ws-load: connection %d: %s\n", i, strerror(errno));
            return 1;
        }
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (send(fd, req, (size_t)req_len, MSG_NOSIGNAL) != req_len) {
            fprintf(stderr, "ws-load: handshake %d: %s\n", i, strerror(errno));
            return 1;
        }
        peers[i].fd = fd;
        pfd[i].fd = fd;
        pfd[i].events = POLLIN;
    }
    /* Wait for every 101 and hello. */
    int n_open = 0;
    double deadline = now_s() + IO_TIMEOUT_SECS;
    while (n_open < n && now_s() < deadline && !g_stop) {
        if (poll(pfd, (nfds_t)n, 1000) <= 0)
            continue;
        for (int i = 0; i < n; i++) {
            struct peer *p = &peers[i];
            if (p->open || !(pfd[i].revents & (POLLIN | POLLHUP | POLLERR)))
                continue;
            ssize_t r = recv(p->fd, p->buf + p->got, sizeof p->buf - p->got, 0);
            if (r <= 0) {
                fprintf(stderr, "ws-load: tunnel %d closed during the handshake\n", i);
                return 1;
            }
            p->got += (size_t)r;
            int done = handshake_done(p);
            if (done < 0) {
                fprintf(stderr, "ws-load: tunnel %d: not a 101: %.40s\n", i, p->buf);
                return 1;
            }
            if (done) {
                p->open = 1;
                p->got = 0;
                pfd[i].events = echo ? POLLIN : 0;
                n_open++;
            }
        }
    }
    printf("ws-load: ready open=%d\n", n_open);
    fflush(stdout);
    if (n_open < n)
        return 1;

    /* A masked frame with a zero mask: the payload goes as it is. */
    unsigned char msg[2 + 4 + FRAME_BYTES];
    msg[0] = 0x81;
    msg[1] = 0x80 | FRAME_BYTES;
    memset(msg + 2, 0, 4);
    memset(msg + 6, 'x', FRAME_BYTES);
    unsigned long long trips = 0;
    double t0 = now_s(), end = t0 + secs;
    if (echo)
        for (int i = 0; i < n; i++)
            if (send(peers[i].fd, msg, sizeof msg, MSG_NOSIGNAL) != (ssize_t)sizeof msg)
                return 1;
    while (now_s() < end && !g_stop) {
        if (!echo) {
            struct timespec ts = { 0, 100000000L };
            nanosleep(&ts, NULL);
            continue;
        }
        if (poll(pfd, (nfds_t)n, 100) <= 0)
            continue;
        for (int i = 0; i < n; i++) {
            struct peer *p = &peers[i];
            if (!(pfd[i].revents & (POLLIN | POLLHUP | POLLERR)))
                continue;
            ssize_t r = recv(p->fd, p->buf + p->got, sizeof p->buf - p->got, 0);
            if (r <= 0) {
                fprintf(stderr, "ws-load: tunnel %d broke\n", i);
                return 1;
            }
            p->got += (size_t)r;
            if (p->got >= 2 + FRAME_BYTES) {            /* the echo: 2-byte head, payload */
                p->got -= 2 + FRAME_BYTES;
                memmove(p->buf, p->buf + 2 + FRAME_BYTES, p->got);
                trips++;
                if (send(p->fd, msg, sizeof msg, MSG_NOSIGNAL) != (ssize_t)sizeof msg)
                    return 1;
            }
        }
    }
    printf("ws-load: done open=%d round_trips=%llu secs=%.2f\n", n_open, trips, now_s() - t0);
    fflush(stdout);
    return 0;
}

/*
 * idle-conns.c - benchmark helper for scripts/bench.sh: opens N keep-alive
 * connections to a proxy, sends one HEAD request on each, reads the answer,
 * and then holds every connection idle for a bounded time.
 *
 * Usage: idle-conns HOST PORT N HOLD_SECS [PATH]
 *   HOST is an IPv4 literal, PATH defaults to /small.html; PATH "-" sends
 *   no request at all (the connections stay idle from their first byte).
 * Output (stdout, one line each, flushed):
 *   idle-conns: ready opened=N answered=N       once all are open and idle
 *   idle-conns: done opened=N answered=N closed_by_peer=N held=N secs=S
 * It exits 0 after HOLD_SECS or on SIGTERM/SIGINT (printing the done line
 * first), 1 when it cannot start, 2 on bad usage.
 *
 * It does not measure anything: the caller samples the proxy while the
 * connections are held. It never sends a second request, never reconnects
 * and only talks to the address it is given.
 * Limits: N <= MAX_CONNS, HOLD_SECS <= MAX_HOLD_SECS, CONNECT_BATCH
 * connections opened before their answers are read, IO_TIMEOUT_SECS per
 * blocking connect/send/receive, RESP_BUF_BYTES of answer head read.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define MAX_CONNS        100000   /* connections one run may hold */
#define MAX_HOLD_SECS    3600     /* longest hold */
#define CONNECT_BATCH    256      /* connections opened before reading their answers */
#define IO_TIMEOUT_SECS  10       /* per blocking connect, send or receive */
#define RESP_BUF_BYTES   4096     /* answer head we read (HEAD has no body) */

static volatile sig_atomic_t g_stop;   /* set by SIGTERM/SIGINT */

/* Signal handler: only records that the hold should end early. */
static void
on_stop(int sig)
{
    (void)sig;
    g_stop = 1;
}

/*
 * Parse a decimal integer in [min, max] from s. Returns 0 and stores it in
 * *out, or -1 when s is not entirely such a number.
 */
static int
parse_num(const char *s, long min, long max, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < min || v > max)
        return -1;
    *out = v;
    return 0;
}

/*
 * Open one blocking TCP connection to addr with IO_TIMEOUT_SECS send and
 * receive timeouts. Returns the descriptor, or -1.
 */
static int
open_conn(const struct sockaddr_in *addr)
{
    struct timeval tv = { IO_TIMEOUT_SECS, 0 };
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd == -1)
        return -1;
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    while (connect(fd, (const struct sockaddr *)addr, sizeof *addr) == -1) {
        if (errno == EINTR)
            continue;
        close(fd);
        return -1;
    }
    return fd;
}

/*
 * Send all len bytes of buf on fd. Returns 0, or -1 on error or timeout.
 */
static int
send_all(int fd, const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = send(fd, buf, len, MSG_NOSIGNAL);
        if (n == -1) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

/*
 * Read the answer head to a HEAD request (it has no body) up to its blank
 * line. Returns 0 when it is a 2xx answer, -1 otherwise (error, timeout,
 * close, non-2xx or a head longer than RESP_BUF_BYTES).
 */
static int
read_answer(int fd)
{
    char buf[RESP_BUF_BYTES + 1];
    size_t used = 0;
    while (used < RESP_BUF_BYTES) {
        ssize_t n = recv(fd, buf + used, RESP_BUF_BYTES - used, 0);
        if (n == -1 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        used += (size_t)n;
        buf[used] = '\0';
        if (strstr(buf, "\r\n\r\n") != NULL)
            return strncmp(buf, "HTTP/1.1 2", 10) == 0 ? 0 : -1;
    }
    return -1;
}

/*
 * Raise the soft descriptor limit to the hard one so that n connections
 * fit. Returns 0, or -1 when even the hard limit is too small.
 */
static int
raise_nofile(long n)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == -1)
        return -1;
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    if (getrlimit(RLIMIT_NOFILE, &rl) == -1)
        return -1;
    return (rlim_t)n + 16 <= rl.rlim_cur ? 0 : -1;
}

/*
 * Hold the open descriptors in fds until hold_secs pass or a stop signal
 * arrives. A descriptor that turns readable was closed by the peer (we sent
 * nothing that could earn more bytes): it is closed and counted.
 * Returns the number of connections the peer closed.
 */
static long
hold(struct pollfd *fds, long n, long hold_secs)
{
    long closed = 0;
    time_t deadline = time(NULL) + hold_secs;
    while (!g_stop) {
        long left = (long)(deadline - time(NULL));
        if (left <= 0)
            break;
        int ready = poll(fds, (nfds_t)n, (int)(left > 1 ? 1000 : left * 1000));
        if (ready == -1 && errno != EINTR)
            break;
        for (long i = 0; ready > 0 && i < n; i++) {
            if (fds[i].fd == -1 || fds[i].revents == 0)
                continue;
            char byte;
            if (recv(fds[i].fd, &byte, 1, MSG_DONTWAIT) > 0)
                continue;    /* stray bytes: the connection is still open */
            close(fds[i].fd);
            fds[i].fd = -1;
            closed++;
        }
    }
    return closed;
}

int
main(int argc, char **argv)
{
    long port, n, hold_secs;
    struct sockaddr_in addr;
    char req[512];
    const char *path = argc > 5 ? argv[5] : "/small.html";
    int silent = strcmp(path, "-") == 0;    /* connect only, never ask */

    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    if (argc < 5 || argc > 6 || inet_pton(AF_INET, argv[1], &addr.sin_addr) != 1 ||
        parse_num(argv[2], 1, 65535, &port) == -1 || parse_num(argv[3], 1, MAX_CONNS, &n) == -1 ||
        parse_num(argv[4], 1, MAX_HOLD_SECS, &hold_secs) == -1 || (path[0] != '/' && !silent)) {
        fprintf(stderr, "usage: idle-conns HOST PORT N HOLD_SECS [PATH]\n");
        return 2;
    }
    addr.sin_port = htons((unsigned short)port);
    int req_len = snprintf(req, sizeof req, "HEAD %s HTTP/1.1\r\nHost: %s:%ld\r\n\r\n", path, argv[1], port);
    if (req_len < 0 || (size_t)req_len >= sizeof req) {
        fprintf(stderr, "idle-conns: path too long\n");
        return 2;
    }
    if (raise_nofile(n) == -1) {
        fprintf(stderr, "idle-conns: descriptor limit too low for %ld connections\n", n);
        return 1;
    }
    struct pollfd *fds = (struct pollfd *)calloc((size_t)n, sizeof *fds);
    if (fds == NULL) {
        fprintf(stderr, "idle-conns: out of memory\n");
        return 1;
    }

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop;     /* no SA_RESTART: poll() returns EINTR */
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    long opened = 0, answered = 0;
    for (long base = 0; base < n && !g_stop; base += CONNECT_BATCH) {
        long end = base + CONNECT_BATCH < n ? base + CONNECT_BATCH : n;
        /* Open and ask a whole batch first, so the proxy serves them in parallel. */
        for (long i = base; i < end; i++) {
            fds[i].fd = open_conn(&addr);
            fds[i].events = POLLIN;
            if (fds[i].fd == -1)
                continue;
            opened++;
            if (silent)
                continue;
            if (send_all(fds[i].fd, req, (size_t)req_len) == -1) {
                close(fds[i].fd);
                fds[i].fd = -1;
            }
        }
        for (long i = base; i < end; i++) {
            if (fds[i].fd == -1 || silent)
                continue;
            if (read_answer(fds[i].fd) == 0) {
                answered++;
            } else {
                close(fds[i].fd);
                fds[i].fd = -1;
            }
        }
    }
    printf("idle-conns: ready opened=%ld answered=%ld\n", opened, answered);
    fflush(stdout);

    time_t start = time(NULL);
    long closed = hold(fds, n, hold_secs);
    long held = 0;
    for (long i = 0; i < n; i++) {
        if (fds[i].fd != -1) {
            held++;
            close(fds[i].fd);
        }
    }
    printf("idle-conns: done opened=%ld answered=%ld closed_by_peer=%ld held=%ld secs=%ld\n", opened, answered,
           closed, held, (long)(time(NULL) - start));
    fflush(stdout);
    free(fds);
    return 0;
}

/*
 * origin/origin.cpp - pibl-origin, the demo and test web server behind PIBL:
 * its start-up, the connection threads and the dispatch of each request.
 * It is not part of the proxy: the deployment runs nginx on the web servers,
 * and the tests, the benchmark and scripts/run-local.sh run this instead.
 *
 * It keeps its own HTTP parser on purpose. A test origin that shared PIBL's
 * http.cpp would share its bugs, and every framing test would then check the
 * parser against itself; this one is written separately and kept strict.
 *
 * It serves the files under ROOT (GET and HEAD, index.html for directories,
 * Content-Type by extension, Last-Modified, ETag, 304 on If-None-Match or
 * If-Modified-Since) and a set of test routes under "/_" that produce odd
 * framings on demand: chunked bodies, close-delimited bodies, aborted bodies,
 * interim 1xx responses, chosen status codes, slow answers, cacheable answers,
 * an echo of the request and an upload sink, a WebSocket echo, a stream of
 * server-sent events and the origin's name alone. Every response names the origin
 * in an X-Backend header, and -l appends one line per request to a log file
 * (plus the raw head to REQLOG.heads) so tests can count what reached which
 * origin.
 *
 * One detached thread per connection with a capped stack; HTTP/1.1 keep-alive
 * and pipelining; HTTP/1.0 clients are closed unless they ask for keep-alive.
 * Request bodies are framed by Content-Length or chunked (decoded, trailers
 * read and dropped); Transfer-Encoding wins over Content-Length (RFC 9112
 * 6.3) and such a connection is closed after the response.
 *
 * What it refuses: ".." path segments (403), encoded NUL (400), transfer
 * codings other than chunked (501), HTTP major versions other than 1 (505),
 * obs-fold and malformed header lines (400). It does not do ranges, TLS,
 * content negotiation or directory listings.
 *
 * The other files of origin/, one job each: io.cpp (socket I/O),
 * request.cpp (its own parser), reply.cpp (answer heads), files.cpp
 * (static files), routes.cpp (test routes), ws.cpp (WebSocket, events).
 *
 * Limits: MAX_HEAD_BYTES per request head (431), MAX_HEADERS header lines
 * (431), MAX_LINE_BYTES per chunk-size or trailer line, MAX_TRAILER_BYTES of
 * trailers, MAX_CONNECTIONS concurrent connections (503 past it), IO_TIMEOUT_SEC
 * of silence on a socket, ECHO_MAX_BODY bytes echoed back by /_echo. File and
 * generated bodies stream through fixed buffers (sendfile for files).
 */
#include "origin.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include <atomic>

struct origin_config g_cfg;                          /* set once at start-up */
static int g_reqlog_fd = -1;                         /* -l file */
static int g_heads_fd = -1;                          /* -l file ".heads" */
static pthread_mutex_t g_log_lock = PTHREAD_MUTEX_INITIALIZER; /* both log fds */
static std::atomic<int> g_n_conns(0);                /* live connections */
static volatile sig_atomic_t g_stop;                 /* SIGINT/SIGTERM seen */

/* ---------------------------------------------------------------- dispatch */

/* 1 if the path is exactly route or route followed by '/', else 0. */
static int path_is(struct str_view path, const char *route)
{
    size_t len = strlen(route);
    return path.len >= len && memcmp(path.ptr, route, len) == 0 &&
           (path.len == len || path.ptr[len] == '/');
}

/*
 * Append "NAME METHOD TARGET\n" to REQLOG and the raw head plus a blank
 * line to REQLOG.heads, each in one O_APPEND writev under g_log_lock, so
 * lines never interleave (not even between origins sharing the file).
 * Done before the response is sent. Errors are ignored: logging must not
 * cost the request.
 */
static void log_request(const struct conn *c)
{
    const struct request *rq = &c->rq;
    struct iovec line[6] = {
        { (void *)g_cfg.name, strlen(g_cfg.name) }, { (void *)" ", 1 },
        { (void *)rq->method.ptr, rq->method.len }, { (void *)" ", 1 },
        { (void *)rq->target.ptr, rq->target.len }, { (void *)"\n", 1 },
    };
    struct iovec head[2] = { { (void *)c->head, rq->head_len }, { (void *)"\n", 1 } };

    if (g_reqlog_fd == -1)
        return;
    pthread_mutex_lock(&g_log_lock);
    writev_all(g_reqlog_fd, line, 6);
    writev_all(g_heads_fd, head, 2);
    pthread_mutex_unlock(&g_log_lock);
}

/*
 * Route the parsed request in c->rq, then finish reading its body so the
 * next pipelined request starts at the right byte. Returns 1 to keep the
 * connection, 0 to close it.
 */
static int handle_request(struct conn *c)
{
    struct request *rq = &c->rq;
    struct str_view p = rq->path;
    int rc;

    if (rq->expect_continue && rq->body != BODY_NONE && send_interim(c, 100, "") == -1)
        return 0;
    if (path_is(p, "/_echo"))
        rc = serve_echo(c);
    else if (view_eq(p, "/_upload"))
        rc = serve_upload(c);
    else if (view_eq(p, "/_chunked"))
        rc = serve_chunked(c);
    else if (view_eq(p, "/_close"))
        rc = serve_close(c);
    else if (p.len > 9 && memcmp(p.ptr, "/_status/", 9) == 0)
        rc = serve_status(c);
    else if (view_eq(p, "/_slow"))
        rc = serve_slow(c);
    else if (view_eq(p, "/_whoami"))
        rc = serve_whoami(c);
    else if (view_eq(p, "/_abort"))
        rc = serve_abort(c);
    else if (view_eq(p, "/_1xx"))
        rc = serve_1xx(c);
    else if (view_eq(p, "/_bytes"))
        rc = serve_bytes(c);
    else if (view_eq(p, "/_cache"))
        rc = serve_cache(c);
    else if (view_eq(p, "/_ws"))
        rc = serve_ws(c);
    else if (view_eq(p, "/_sse"))
        rc = serve_sse(c);
    else if (view_eq(p, "*"))
        rc = serve_options(c);
    else
        rc = serve_static(c);
    if (rc == -1 || !rq->keep_alive)
        return 0;
    return body_drain(c) == 0;
}

/*
 * Close the client socket. When linger is set, first half-close and read
 * what the peer still sends (bounded), so an early response is not lost to
 * a TCP reset caused by unread request bytes.
 */
static void conn_close(int fd, int linger)
{
    if (linger && shutdown(fd, SHUT_WR) == 0) {
        struct timeval tv = { LINGER_TIMEOUT_SEC, 0 };
        char buf[4096];
        size_t total = 0;
        ssize_t n;
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        while (total < LINGER_MAX_BYTES && (n = recv_retry(fd, buf, sizeof buf)) > 0)
            total += (size_t)n;
    }
    close(fd);
}

/*
 * Connection thread: serve requests until the client closes, asks to
 * close, errs or stays silent for IO_TIMEOUT_SEC. Frees c and closes its
 * socket. Detached; returns NULL.
 */
static void *conn_thread(void *arg)
{
    struct conn *c = (struct conn *)arg;
    int linger = 0;
    size_t head_len;

    for (;;) {
        int r = read_head(c, &head_len);
        if (r == 0 || r == -1)
            break;
        linger = 1;
        if (r == -2) {
            memset(&c->rq, 0, sizeof c->rq);
            c->rq.minor = 1;
            send_error(c, 431);
            break;
        }
        int status = parse_head(&c->rq, c->head, head_len);
        if (c->rq.line_ok)
            log_request(c);
        if (status != 0) {
            c->rq.keep_alive = 0;
            send_error(c, status);
            break;
        }
        if (!handle_request(c))
            break;
        linger = 0;
    }
    conn_close(c->fd, linger);
    free(c);
    g_n_conns--;
    return NULL;
}

/* ---------------------------------------------------------------- start-up */

/*
 * Set up an accepted socket (no Nagle delay for small responses, I/O
 * timeouts) and start its detached thread with a THREAD_STACK_BYTES stack.
 * Over MAX_CONNECTIONS the client gets a 503 and is closed. Never blocks
 * on the client.
 */
static void start_connection(int fd)
{
    static const char busy[] = "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n"
                               "Connection: close\r\n\r\n";
    struct timeval tv = { IO_TIMEOUT_SEC, 0 };
    int one = 1;
    pthread_attr_t attr;
    pthread_t tid;

    if (g_n_conns.fetch_add(1) >= MAX_CONNECTIONS) {
        send(fd, busy, sizeof busy - 1, MSG_NOSIGNAL | MSG_DONTWAIT);
        goto fail;
    }
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    {
        struct conn *c = (struct conn *)malloc(sizeof *c);
        if (c == NULL)
            goto fail;
        c->fd = fd;
        c->r_start = c->r_end = c->out_len = 0;
        pthread_attr_init(&attr);
        pthread_attr_setstacksize(&attr, THREAD_STACK_BYTES);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        int err = pthread_create(&tid, &attr, conn_thread, c);
        pthread_attr_destroy(&attr);
        if (err == 0)
            return;
        free(c);
    }
fail:
    close(fd);
    g_n_conns--;
}

/*
 * Bind and listen on addr:port (IPv4 or IPv6 literal). Stores the real
 * port in *real_port (port 0 picks a free one). Returns the non-blocking
 * listening fd, or -1 after printing why.
 */
static int open_listener(const char *addr, int port, int *real_port)
{
    struct addrinfo hints, *ai = NULL;
    struct sockaddr_storage ss;
    socklen_t ss_len = sizeof ss;
    char port_str[16];
    int one = 1, fd = -1, err;

    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV | AI_PASSIVE;
    snprintf(port_str, sizeof port_str, "%d", port);
    if ((err = getaddrinfo(addr, port_str, &hints, &ai)) != 0) {
        fprintf(stderr, "pibl-origin: %s: %s\n", addr, gai_strerror(err));
        return -1;
    }
    fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd == -1 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) == -1 ||
        bind(fd, ai->ai_addr, ai->ai_addrlen) == -1 || listen(fd, LISTEN_BACKLOG) == -1 ||
        getsockname(fd, (struct sockaddr *)&ss, &ss_len) == -1)
        goto fail;
    if (fd >= FD_SETSIZE) {
        errno = EMFILE;
        goto fail;
    }
    *real_port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                                : ((struct sockaddr_in *)&ss)->sin_port);
    freeaddrinfo(ai);
    return fd;
fail:
    fprintf(stderr, "pibl-origin: %s port %d: %s\n", addr, port, strerror(errno));
    if (fd != -1)
        close(fd);
    freeaddrinfo(ai);
    return -1;
}

/* SIGINT/SIGTERM: ask the accept loop to stop. */
static void on_stop_signal(int sig)
{
    (void)sig;
    g_stop = 1;
}

/*
 * Ignore SIGPIPE; block SIGINT/SIGTERM in every thread (threads inherit the
 * mask) so only pselect() in the accept loop, which unblocks them, sees
 * them. *wait_mask receives the mask pselect() should use.
 */
static void setup_signals(sigset_t *wait_mask)
{
    struct sigaction sa;
    sigset_t block;

    memset(&sa, 0, sizeof sa);
    sa.sa_handler = SIG_IGN;
    sigaction(SIGPIPE, &sa, NULL);
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigemptyset(&block);
    sigaddset(&block, SIGINT);
    sigaddset(&block, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &block, wait_mask);
    sigdelset(wait_mask, SIGINT);
    sigdelset(wait_mask, SIGTERM);
}

/* Print the usage text to f. */
static void usage(FILE *f)
{
    fprintf(f, "usage: pibl-origin -p PORT [-a ADDR] [-n NAME] [-r ROOT] [-l REQLOG] [-u UPLOAD_DIR]\n"
               "  -p PORT        port to listen on (0 = any free port)\n"
               "  -a ADDR        address to bind (default 127.0.0.1)\n"
               "  -n NAME        X-Backend value (default origin-PORT)\n"
               "  -r ROOT        static file root (default www)\n"
               "  -l REQLOG      append \"NAME METHOD TARGET\" per request; raw heads to REQLOG.heads\n"
               "  -u UPLOAD_DIR  where POST|PUT /_upload stores bodies (default: count only)\n");
}

/*
 * Parse argv into g_cfg. Returns 0, 1 when -h was given, -1 on bad usage
 * (message printed).
 */
static int parse_args(int argc, char **argv)
{
    int opt, have_port = 0;
    const char *name = NULL;

    g_cfg.addr = "127.0.0.1";
    g_cfg.root = "www";
    if (argc == 2 && strcmp(argv[1], "--help") == 0)
        return 1;                               /* as -h */
    while ((opt = getopt(argc, argv, "p:a:n:r:l:u:h")) != -1) {
        switch (opt) {
        case 'p': {
            struct str_view v = { optarg, strlen(optarg) };
            unsigned long long port;
            if (parse_u64(v, 65535, &port) == -1) {
                fprintf(stderr, "pibl-origin: bad port \"%s\"\n", optarg);
                return -1;
            }
            g_cfg.port = (int)port;
            have_port = 1;
            break;
        }
        case 'a': g_cfg.addr = optarg; break;
        case 'n': name = optarg; break;
        case 'r': g_cfg.root = optarg; break;
        case 'l': g_cfg.reqlog_path = optarg; break;
        case 'u': g_cfg.upload_dir = optarg; break;
        case 'h': return 1;
        default: return -1;
        }
    }
    if (!have_port || optind != argc) {
        fprintf(stderr, "pibl-origin: %s\n", have_port ? "unexpected argument" : "-p PORT is required");
        return -1;
    }
    if (name != NULL) {
        struct str_view v = { name, strlen(name) };
        if (v.len >= MAX_NAME_BYTES || !is_token(v)) {
            fprintf(stderr, "pibl-origin: bad name \"%s\" (1..%d token characters)\n", name,
                    MAX_NAME_BYTES - 1);
            return -1;
        }
        snprintf(g_cfg.name, sizeof g_cfg.name, "%s", name);
    }
    return 0;
}

/*
 * Open the -l files and check ROOT and UPLOAD_DIR (creating UPLOAD_DIR if
 * missing). Returns 0, or -1 after printing why.
 */
static int open_files(void)
{
    char heads[MAX_PATH_BYTES];
    struct stat st;

    if (stat(g_cfg.root, &st) == -1 || !S_ISDIR(st.st_mode))
        fprintf(stderr, "pibl-origin: warning: root %s is not a directory; static files will 404\n",
                g_cfg.root);
    if (g_cfg.upload_dir != NULL && mkdir(g_cfg.upload_dir, 0755) == -1 && errno != EEXIST) {
        fprintf(stderr, "pibl-origin: %s: %s\n", g_cfg.upload_dir, strerror(errno));
        return -1;
    }
    if (g_cfg.reqlog_path == NULL)
        return 0;
    int n = snprintf(heads, sizeof heads, "%s.heads", g_cfg.reqlog_path);
    if (n < 0 || (size_t)n >= sizeof heads) {
        fprintf(stderr, "pibl-origin: %s: name too long\n", g_cfg.reqlog_path);
        return -1;
    }
    g_reqlog_fd = open(g_cfg.reqlog_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    g_heads_fd = open(heads, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (g_reqlog_fd == -1 || g_heads_fd == -1) {
        fprintf(stderr, "pibl-origin: %s: %s\n", g_reqlog_fd == -1 ? g_cfg.reqlog_path : heads,
                strerror(errno));
        return -1;
    }
    return 0;
}

/*
 * Wait for connections with pselect() (signals unblocked only there) and
 * hand each to a thread, until SIGINT/SIGTERM.
 */
static void accept_loop(int listen_fd, const sigset_t *wait_mask)
{
    while (!g_stop) {
        fd_set readable;
        FD_ZERO(&readable);
        FD_SET(listen_fd, &readable);
        int n = pselect(listen_fd + 1, &readable, NULL, NULL, NULL, wait_mask);
        if (n == -1)
            continue;   /* EINTR: g_stop is checked by the loop */
        int fd = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC);
        if (fd == -1) {
            if (errno == EMFILE || errno == ENFILE) {
                struct timespec ts = { 0, 100 * 1000000L };
                nanosleep(&ts, NULL);   /* let threads give fds back */
            }
            continue;
        }
        start_connection(fd);
    }
}

int main(int argc, char **argv)
{
    sigset_t wait_mask;
    int listen_fd;

    int args = parse_args(argc, argv);
    if (args != 0) {
        usage(args == 1 ? stdout : stderr);
        return args == 1 ? 0 : 2;
    }
    setup_signals(&wait_mask);
    if (open_files() == -1)
        return 2;
    listen_fd = open_listener(g_cfg.addr, g_cfg.port, &g_cfg.port);
    if (listen_fd == -1)
        return 2;
    if (g_cfg.name[0] == '\0')
        snprintf(g_cfg.name, sizeof g_cfg.name, "origin-%d", g_cfg.port);
    io_init();
    routes_init();
    if (strchr(g_cfg.addr, ':') != NULL)
        printf("origin %s listening on [%s]:%d\n", g_cfg.name, g_cfg.addr, g_cfg.port);
    else
        printf("origin %s listening on %s:%d\n", g_cfg.name, g_cfg.addr, g_cfg.port);
    fflush(stdout);
    accept_loop(listen_fd, &wait_mask);
    close(listen_fd);
    return 0;
}

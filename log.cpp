/*
 * log.cpp - formats log lines and writes them from a thread of its own:
 * access lines (log_access, in the log_format chosen) to standard output and
 * the log file; PIBL's own lines (log_line, log_block) to the error log.
 *
 * Request threads format a line into a stack buffer and append it to a
 * shared queue under a mutex held only for a memcpy (an event loop gathers
 * its lines in a buffer of its own and appends them once per turn, see
 * log_batch_begin); the writer thread swaps
 * the queue out and writes it with no lock held, so a slow terminal or disk
 * never sits inside the request path. After each write it pauses
 * LOG_BATCH_MS, so under load lines reach the disk in batches and request
 * threads almost never have to wake it. Lines are appended whole, so the file
 * never holds two lines interleaved.
 *
 * PIBL's own lines share the access queue when they go to the same place
 * (the pibl format with no error_log: interleaved, in order), and have a
 * small queue of their own when they go apart (an error_log, or the
 * combined and json formats, whose log files then hold access lines only).
 *
 * The formats: pibl writes strings with quotes, backslashes, control and
 * non-ASCII bytes as '?'; combined escapes '"' and '\' with a backslash and
 * other control and non-ASCII bytes as \xHH (as Apache does); json escapes
 * as JSON wants, with every byte outside printable ASCII as \u00XX (the
 * byte's value), so a line is always ASCII and valid JSON.
 *
 * What it does not do: decide what to log (exchange.cpp does), rotate files.
 * Limits: LOG_LINE_MAX bytes per line (longer own lines are cut and end in
 * "..."; an access line cuts its long fields instead, LOG_TAIL_ROOM),
 * LOG_QUEUE_BYTES queued access lines, LOG_OWN_BYTES queued own lines apart;
 * a producer waits when a queue is full rather than dropping a line.
 */
#include "log.h"
#include "pibl.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define LOG_QUEUE_BYTES (1024 * 1024)
#define LOG_OWN_BYTES   (64 * 1024)   /* own lines, when they go apart */
#define LOG_BATCH_BYTES (32 * 1024)   /* an event loop's own lines, per turn */
#define LOG_BATCH_MS    5          /* the writer's pause between two writes */
#define LOG_CLOSE_ROOM  16         /* an access line's room for its closing bytes */

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_have_lines = PTHREAD_COND_INITIALIZER;  /* writer waits */
static pthread_cond_t g_have_room = PTHREAD_COND_INITIALIZER;   /* producers wait */
static char *g_queue;              /* lines waiting for the writer */
static size_t g_queue_len;         /* bytes used in g_queue */
static char *g_spare;              /* the buffer the writer is writing */
static char *g_own;                /* own lines waiting, when they go apart */
static size_t g_own_len;
static char *g_own_spare;
static int g_stopping;             /* log_close() was called */
static int g_started;              /* writer thread running */
static int g_format;               /* enum log_format, set by log_open */
static int g_own_apart;            /* own lines go to g_err_fd, not with access lines */
static int g_err_fd = STDERR_FILENO;   /* where own lines go when apart */
static char g_err_path[PATH_MAX];  /* the error log's file, "" when a std stream */
static int g_file_fd = -1;         /* log file, -1 if it could not be opened */
static int g_stdout_ok = 1;        /* cleared after EPIPE on stdout */
static int g_file_warned;          /* a write error was reported once */
static int g_err_warned;           /* the same, for the error log's file */
static pthread_t g_writer;
static char g_reopen_path[PATH_MAX];   /* set by log_reopen, under g_lock */
static int g_reopen;                   /* the writer should reopen the file */
static int g_writer_waiting;           /* the writer sleeps on g_have_lines */
static thread_local char *t_batch;     /* this thread's lines not yet queued */
static thread_local size_t t_batch_len;

static void
write_out(const char *buf, size_t len)
{
    if (g_stdout_ok && pibl_write_all(STDOUT_FILENO, buf, len) == -1 && errno != EAGAIN)
        g_stdout_ok = 0;
    if (g_file_fd != -1 && pibl_write_all(g_file_fd, buf, len) == -1) {
        if (!g_file_warned) {
            char msg[160];
            int n = snprintf(msg, sizeof msg, "pibl: warning: cannot write the log file: %s\n",
                strerror(errno));
            pibl_write_all(STDERR_FILENO, msg, (size_t)n);
            g_file_warned = 1;
        }
    } else if (g_file_fd != -1) {
        g_file_warned = 0;
    }
}

/* Write own lines where they go: with the access lines, or the error log. */
static void
own_write(const char *buf, size_t len)
{
    if (!g_own_apart) {
        write_out(buf, len);
        return;
    }
    if (g_err_fd == STDOUT_FILENO && !g_stdout_ok)
        return;
    if (pibl_write_all(g_err_fd, buf, len) == -1) {
        if (g_err_fd == STDOUT_FILENO && errno != EAGAIN)
            g_stdout_ok = 0;
        if (g_err_path[0] != '\0' && !g_err_warned) {
            char msg[160];
            int n = snprintf(msg, sizeof msg, "pibl: warning: cannot write the error log: %s\n",
                strerror(errno));
            pibl_write_all(STDERR_FILENO, msg, (size_t)n);
            g_err_warned = 1;
        }
    } else {
        g_err_warned = 0;
    }
}

/* Open a log file for appending; -1 with errno. */
static int
open_append(const char *path)
{
    return open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
}

/* The writer's part of a reopen: the log file at path, then the error
 * log's file; each success or failure said on the error log. */
static void
reopen_files(const char *path)
{
    char msg[PATH_MAX + 128];
    int n;
    int fd = open_append(path);

    if (fd == -1) {
        n = snprintf(msg, sizeof msg, "pibl: warning: cannot reopen log file %s: %s\n", path,
            strerror(errno));
    } else {
        if (g_file_fd != -1)
            close(g_file_fd);
        g_file_fd = fd;
        g_file_warned = 0;
        n = snprintf(msg, sizeof msg, "pibl: log file reopened (%s)\n", path);
    }
    if (g_own_apart && g_err_path[0] != '\0') {
        /* On failure the old one stays open and says so. */
        int efd = open_append(g_err_path);
        if (efd == -1) {
            char w[PATH_MAX + 128];
            int m = snprintf(w, sizeof w, "pibl: warning: cannot reopen error log %s: %s\n",
                g_err_path, strerror(errno));
            own_write(w, m > 0 && (size_t)m < sizeof w ? (size_t)m : 0);
        } else {
            close(g_err_fd);
            g_err_fd = efd;
            g_err_warned = 0;
            if (fd != -1 && n > 0 && (size_t)n < sizeof msg)   /* name it in the same line */
                n = snprintf(msg, sizeof msg, "pibl: log file reopened (%s), error log reopened (%s)\n",
                    path, g_err_path);
        }
    }
    own_write(msg, n > 0 && (size_t)n < sizeof msg ? (size_t)n : 0);
}

/* The writer thread: swap the queue out, write it without the lock. */
static void *
writer_main(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&g_lock);
    for (;;) {
        while (g_queue_len == 0 && g_own_len == 0 && !g_stopping && !g_reopen) {
            g_writer_waiting = 1;
            pthread_cond_wait(&g_have_lines, &g_lock);
            g_writer_waiting = 0;
        }
        if (g_reopen) {
            /* Only this thread writes the file, so it alone swaps it. */
            char path[PATH_MAX];
            memcpy(path, g_reopen_path, sizeof path);
            g_reopen = 0;
            pthread_mutex_unlock(&g_lock);
            reopen_files(path);
            pthread_mutex_lock(&g_lock);
            continue;
        }
        if (g_queue_len == 0 && g_own_len == 0 && g_stopping)
            break;
        char *buf = g_queue, *own = g_own;
        size_t len = g_queue_len, own_len = g_own_len;
        g_queue = g_spare;
        g_queue_len = 0;
        g_spare = buf;
        if (own_len > 0) {
            g_own = g_own_spare;
            g_own_len = 0;
            g_own_spare = own;
        }
        pthread_cond_broadcast(&g_have_room);
        int stopping = g_stopping;
        pthread_mutex_unlock(&g_lock);
        if (own_len > 0)
            own_write(own, own_len);
        if (len > 0)
            write_out(buf, len);
        /* Let lines gather before the next write: under load this thread
         * wakes LOG_BATCH_MS apart instead of once per line. */
        if (!stopping)
            usleep(LOG_BATCH_MS * 1000);
        pthread_mutex_lock(&g_lock);
    }
    pthread_mutex_unlock(&g_lock);
    return NULL;
}

int
log_format_parse(const char *name)
{
    if (strcmp(name, "pibl") == 0)
        return LOG_FORMAT_PIBL;
    if (strcmp(name, "combined") == 0)
        return LOG_FORMAT_COMBINED;
    if (strcmp(name, "json") == 0)
        return LOG_FORMAT_JSON;
    return -1;
}

int
log_open(const char *path, int format, const char *error_log)
{
    int chosen = error_log != NULL && error_log[0] != '\0';

    g_format = format;
    g_own_apart = chosen || format != LOG_FORMAT_PIBL;
    g_queue = (char *)malloc(LOG_QUEUE_BYTES);
    g_spare = (char *)malloc(LOG_QUEUE_BYTES);
    if (g_own_apart) {                          /* else own lines share g_queue */
        g_own = (char *)malloc(LOG_OWN_BYTES);
        g_own_spare = (char *)malloc(LOG_OWN_BYTES);
    }
    if (g_queue == NULL || g_spare == NULL || (g_own_apart && (g_own == NULL || g_own_spare == NULL)))
        return -1;
    if (chosen && strcmp(error_log, "stdout") == 0) {
        g_err_fd = STDOUT_FILENO;
    } else if (chosen && strcmp(error_log, "stderr") != 0) {
        int fd = open_append(error_log);
        if (fd == -1) {
            fprintf(stderr, "pibl: warning: cannot open error log %s: %s (using stderr)\n",
                error_log, strerror(errno));
        } else {
            g_err_fd = fd;
            snprintf(g_err_path, sizeof g_err_path, "%s", error_log);
        }
    }
    g_file_fd = open_append(path);
    if (g_file_fd == -1)
        fprintf(stderr, "pibl: warning: cannot open log file %s: %s (logging to stdout only)\n",
            path, strerror(errno));
    if (pthread_create(&g_writer, NULL, writer_main, NULL) != 0)
        return -1;
    g_started = 1;
    return 0;
}

/* Append len bytes to the queue, waiting for room. Writes directly if the
 * writer is not running (start-up errors, unit tests). */
static void
enqueue_now(const char *buf, size_t len)
{
    if (!g_started) {
        write_out(buf, len);
        return;
    }
    if (len > LOG_QUEUE_BYTES)
        len = LOG_QUEUE_BYTES;
    pthread_mutex_lock(&g_lock);
    while (g_queue_len + len > LOG_QUEUE_BYTES && !g_stopping)
        pthread_cond_wait(&g_have_room, &g_lock);
    if (g_queue_len + len <= LOG_QUEUE_BYTES) {
        memcpy(g_queue + g_queue_len, buf, len);
        g_queue_len += len;
        if (g_writer_waiting)
            pthread_cond_signal(&g_have_lines);
    }
    pthread_mutex_unlock(&g_lock);
}

/* Queue len bytes, or keep them in this thread's batch if it has one. */
static void
enqueue(const char *buf, size_t len)
{
    if (t_batch != NULL && g_started) {
        if (t_batch_len + len > LOG_BATCH_BYTES)
            log_flush();
        if (len <= LOG_BATCH_BYTES) {
            memcpy(t_batch + t_batch_len, buf, len);
            t_batch_len += len;
            return;
        }
    }
    enqueue_now(buf, len);
}

/* Queue own lines that go apart from the access lines. Not batched: they
 * are few, and they must not wait behind a loop's turn. */
static void
enqueue_own(const char *buf, size_t len)
{
    if (!g_started) {
        own_write(buf, len);
        return;
    }
    if (len > LOG_OWN_BYTES)
        len = LOG_OWN_BYTES;
    pthread_mutex_lock(&g_lock);
    while (g_own_len + len > LOG_OWN_BYTES && !g_stopping)
        pthread_cond_wait(&g_have_room, &g_lock);
    if (g_own_len + len <= LOG_OWN_BYTES) {
        memcpy(g_own + g_own_len, buf, len);
        g_own_len += len;
        if (g_writer_waiting)
            pthread_cond_signal(&g_have_lines);
    }
    pthread_mutex_unlock(&g_lock);
}

/* Queue own lines wherever they go. */
static void
enqueue_own_lines(const char *buf, size_t len)
{
    if (g_own_apart)
        enqueue_own(buf, len);
    else
        enqueue(buf, len);
}

void
log_batch_begin(void)
{
    if (t_batch == NULL)
        t_batch = (char *)malloc(LOG_BATCH_BYTES);   /* none: lines go one by one */
}

void
log_flush(void)
{
    if (t_batch_len > 0) {
        int saved_errno = errno;
        enqueue_now(t_batch, t_batch_len);
        t_batch_len = 0;
        errno = saved_errno;
    }
}

void
log_line(const char *fmt, ...)
{
    char buf[LOG_LINE_MAX];
    int saved_errno = errno;
    va_list ap;

    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf - 1, fmt, ap);
    va_end(ap);
    if (n < 0)
        n = 0;
    if ((size_t)n >= sizeof buf - 1) {
        n = (int)sizeof buf - 2;
        memcpy(buf + n - 3, "...", 3);
    }
    buf[n++] = '\n';
    enqueue_own_lines(buf, (size_t)n);
    errno = saved_errno;
}

void
log_access(const struct log_access *a)
{
    char buf[LOG_LINE_MAX];
    int saved_errno = errno;
    struct timespec now;

    clock_gettime(CLOCK_REALTIME, &now);
    size_t n = log_format_access(g_format, a, &now, buf, sizeof buf - 1);
    buf[n++] = '\n';
    enqueue(buf, n);
    errno = saved_errno;
}

void
log_block(const char *title, const char *text, size_t text_len)
{
    char buf[LOG_LINE_MAX * 4];
    size_t len = 0;
    int saved_errno = errno;

    len += (size_t)snprintf(buf, sizeof buf, "  %s\n", title);
    /* One line per header line, indented; CR dropped. Cut at the buffer. */
    const char *p = text, *end = text + text_len;
    while (p < end && len + 8 < sizeof buf) {
        const char *nl = (const char *)memchr(p, '\n', (size_t)(end - p));
        const char *le = nl ? nl : end;
        size_t ll = (size_t)(le - p);
        if (ll > 0 && p[ll - 1] == '\r')
            ll--;
        if (ll == 0)
            break;                 /* the blank line ending the head */
        if (len + ll + 6 >= sizeof buf)
            ll = sizeof buf - len - 6;
        memcpy(buf + len, "    ", 4);
        memcpy(buf + len + 4, p, ll);
        len += ll + 4;
        buf[len++] = '\n';
        p = nl ? nl + 1 : end;
    }
    enqueue_own_lines(buf, len);
    errno = saved_errno;
}

/* ---------------------------------------------------------------- access lines */

/* "2026-11-27T02:30:04.123Z" (24 bytes and a NUL) for now into buf; the
 * part to the second is kept per thread, as it changes once a second. */
static void
iso_time(const struct timespec *now, char buf[32])
{
    static thread_local time_t cached_sec = -1;
    static thread_local char cached[24];   /* "2026-11-27T02:30:04" */

    if (now->tv_sec != cached_sec) {
        struct tm tm;
        gmtime_r(&now->tv_sec, &tm);
        strftime(cached, sizeof cached, "%Y-%m-%dT%H:%M:%S", &tm);
        cached_sec = now->tv_sec;
    }
    /* By hand: this runs once per exchange. */
    long ms = now->tv_nsec / 1000000;
    memcpy(buf, cached, 19);
    char tail[6] = { '.', (char)('0' + ms / 100), (char)('0' + ms / 10 % 10), (char)('0' + ms % 10),
        'Z', '\0' };
    memcpy(buf + 19, tail, sizeof tail);
}

/* The combined format's "27/Nov/2026:02:30:04 +0000" (26 bytes and a NUL)
 * for now into buf, always UTC; months named by hand, whatever the locale. */
static void
clf_time(const struct timespec *now, char buf[32])
{
    static const char months[] = "JanFebMarAprMayJunJulAugSepOctNovDec";
    static thread_local time_t cached_sec = -1;
    static thread_local char cached[32];

    if (now->tv_sec != cached_sec) {
        struct tm tm;
        gmtime_r(&now->tv_sec, &tm);
        int year = (tm.tm_year + 1900) % 10000;
        char *p = cached;
        *p++ = (char)('0' + tm.tm_mday / 10);
        *p++ = (char)('0' + tm.tm_mday % 10);
        *p++ = '/';
        memcpy(p, months + 3 * tm.tm_mon, 3);
        p += 3;
        *p++ = '/';
        for (int div = 1000; div > 0; div /= 10)
            *p++ = (char)('0' + year / div % 10);
        const int hms[3] = { tm.tm_hour, tm.tm_min, tm.tm_sec };
        for (int i = 0; i < 3; i++) {
            *p++ = ':';
            *p++ = (char)('0' + hms[i] / 10);
            *p++ = (char)('0' + hms[i] % 10);
        }
        memcpy(p, " +0000", 7);
        cached_sec = now->tv_sec;
    }
    memcpy(buf, cached, sizeof cached);
}

void
log_timestamp(char *buf, size_t len)
{
    struct timespec now;
    char ts[32];

    clock_gettime(CLOCK_REALTIME, &now);
    iso_time(&now, ts);
    snprintf(buf, len, "%s", len > 24 ? ts : "");
}

/* An access line being written. What a client sent stops at soft and
 * PIBL's own strings (backend names, err) at end, so the fixed parts after
 * them always fit before cap: a cut field never costs the line its shape. */
struct line_out {
    char *buf;
    size_t cap;                    /* nothing is written past it */
    size_t soft;                   /* cap - LOG_TAIL_ROOM */
    size_t end;                    /* cap - LOG_CLOSE_ROOM */
    size_t len;
};

enum { OURS = 0, THEIRS = 1 };     /* whose string: which limit cuts it */

static void
put_fixed(struct line_out *o, const char *s, size_t n)
{
    if (n > o->cap - o->len)
        n = o->cap - o->len;
    memcpy(o->buf + o->len, s, n);
    o->len += n;
}

static void
put_str(struct line_out *o, const char *s)
{
    put_fixed(o, s, strlen(s));
}

static void
put_num(struct line_out *o, unsigned long long v)
{
    char d[24];
    size_t i = sizeof d;

    do {
        d[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    put_fixed(o, d + i, sizeof d - i);
}

/* A duration in ms with two decimals ("0.52"). */
static void
put_ms(struct line_out *o, int64_t us)
{
    if (us < 0)
        us = 0;
    put_num(o, (unsigned long long)(us / 1000));
    char frac[3] = { '.', (char)('0' + us % 1000 / 100), (char)('0' + us % 100 / 10) };
    put_fixed(o, frac, sizeof frac);
}

/* One byte that is not printable ASCII, or is '"' or '\\', escaped for
 * format into e; returns its length (at most 6). */
static size_t
escape_byte(int format, unsigned char ch, char *e)
{
    static const char hex[] = "0123456789abcdef";

    if (format == LOG_FORMAT_PIBL) {
        e[0] = '?';
        return 1;
    }
    e[0] = '\\';
    if (ch == '"' || ch == '\\') {
        e[1] = (char)ch;
        return 2;
    }
    if (format == LOG_FORMAT_COMBINED) {
        e[1] = 'x';
        e[2] = hex[ch >> 4];
        e[3] = hex[ch & 15];
        return 4;
    }
    const char *named = ch == '\n' ? "n" : ch == '\r' ? "r" : ch == '\t' ? "t" : ch == '\b' ? "b" :
        ch == '\f' ? "f" : NULL;
    if (named != NULL) {
        e[1] = named[0];
        return 2;
    }
    memcpy(e + 1, "u00", 3);                    /* RFC 8259 7; >= 0x7f too: ASCII only */
    e[4] = hex[ch >> 4];
    e[5] = hex[ch & 15];
    return 6;
}

/* Bytes every format writes as they are: printable ASCII but '"' and '\\'. */
struct byte_set {
    unsigned char in[256];
};

static constexpr struct byte_set
plain_bytes(void)
{
    struct byte_set t = {};

    for (int ch = 0x20; ch < 0x7f; ch++)
        t.in[ch] = ch != '"' && ch != '\\';
    return t;
}

static constexpr struct byte_set g_plain = plain_bytes();   /* in[0] = 0: stops at the NUL */

/* s escaped for format; past its limit (whose: THEIRS or OURS) it is
 * cut, ending in "...". Runs of plain bytes are copied whole: this is on
 * every exchange's path. */
static void
put_escaped(struct line_out *o, int format, const char *s, int whose)
{
    size_t limit = whose == THEIRS ? o->soft : o->end;
    const unsigned char *p = (const unsigned char *)s;

    for (;;) {
        size_t room = limit > o->len ? limit - o->len : 0;
        size_t left = strlen((const char *)p);
        const unsigned char *q = p, *stop = p + (left < room ? left : room);
        while (q < stop && g_plain.in[*q])
            q++;
        memcpy(o->buf + o->len, p, (size_t)(q - p));
        o->len += (size_t)(q - p);
        if (*q == '\0')
            return;
        room -= (size_t)(q - p);
        char e[6];
        size_t n = g_plain.in[*q] ? 1 : escape_byte(format, *q, e);
        if (n > room || g_plain.in[*q]) {       /* no room left for it */
            put_fixed(o, "...", 3);
            return;
        }
        memcpy(o->buf + o->len, e, n);
        o->len += n;
        p = q + 1;
    }
}

static int
present(const char *s)
{
    return s != NULL && s[0] != '\0';
}

/* s escaped, or "-" when absent. */
static void
put_or_dash(struct line_out *o, int format, const char *s, int whose)
{
    if (present(s))
        put_escaped(o, format, s, whose);
    else
        put_fixed(o, "-", 1);
}

/* The pibl format names the backends tried when more than one was, or
 * when the answer is a backend failure (502, 503, 504). */
static int
pibl_shows_tried(const struct log_access *a)
{
    return a->n_tried > 1 || (a->n_tried > 0 && a->status >= 502 && a->status <= 504);
}

/* " HTTP/1.x" after the target; for a refused request line, its own
 * protocol as received (escaped), or nothing when it had none. */
static void
put_protocol(struct line_out *o, int format, const struct log_access *a)
{
    if (a->proto == NULL) {
        put_str(o, " HTTP/1.");
        put_num(o, (unsigned long long)a->minor);
    } else if (a->proto[0] != '\0') {
        put_fixed(o, " ", 1);
        put_escaped(o, format, a->proto, THEIRS);
    }
}

static void
format_pibl(struct line_out *o, const struct log_access *a, const struct timespec *now)
{
    char ts[32];

    iso_time(now, ts);
    put_fixed(o, ts, 24);
    put_fixed(o, " ", 1);
    put_or_dash(o, LOG_FORMAT_PIBL, a->client, THEIRS);
    put_fixed(o, " \"", 2);
    put_or_dash(o, LOG_FORMAT_PIBL, a->method, THEIRS);
    put_fixed(o, " ", 1);
    put_or_dash(o, LOG_FORMAT_PIBL, a->target, THEIRS);
    put_protocol(o, LOG_FORMAT_PIBL, a);
    put_str(o, "\" host=");
    put_or_dash(o, LOG_FORMAT_PIBL, a->host, THEIRS);
    put_str(o, " backend=");
    put_or_dash(o, LOG_FORMAT_PIBL, a->backend, OURS);
    put_str(o, " status=");
    put_num(o, (unsigned long long)a->status);
    put_str(o, " bytes=");
    put_num(o, a->bytes);
    if (a->tunnel) {                            /* a tunnel: the other way too */
        put_str(o, " up=");
        put_num(o, a->up_bytes);
    }
    put_str(o, " ms=");
    put_ms(o, a->us);
    put_str(o, " cache=");
    put_or_dash(o, LOG_FORMAT_PIBL, a->cache, OURS);
    put_str(o, " ua=\"");
    put_or_dash(o, LOG_FORMAT_PIBL, a->ua, THEIRS);
    put_str(o, "\" ref=\"");
    put_or_dash(o, LOG_FORMAT_PIBL, a->referer, THEIRS);
    put_fixed(o, "\"", 1);
    if (pibl_shows_tried(a)) {
        put_str(o, " tried=");
        for (int i = 0; i < a->n_tried && o->len < o->end; i++) {
            if (i > 0)
                put_fixed(o, ",", 1);
            put_escaped(o, LOG_FORMAT_PIBL, a->tried[i], OURS);
        }
    }
    if (present(a->err)) {
        put_str(o, " err=\"");
        put_escaped(o, LOG_FORMAT_PIBL, a->err, OURS);
        put_fixed(o, "\"", 1);
    }
}

/* Apache's combined: %h %l %u %t "%r" %>s %b "%{Referer}i" "%{User-Agent}i",
 * with %b as a number (0, not "-", as nginx writes it). */
static void
format_combined(struct line_out *o, const struct log_access *a, const struct timespec *now)
{
    char ts[32];

    clf_time(now, ts);
    put_or_dash(o, LOG_FORMAT_COMBINED, a->client_ip, THEIRS);
    put_str(o, " - - [");
    put_fixed(o, ts, 26);
    put_str(o, "] \"");
    if (present(a->method)) {
        put_escaped(o, LOG_FORMAT_COMBINED, a->method, THEIRS);
        put_fixed(o, " ", 1);
        put_or_dash(o, LOG_FORMAT_COMBINED, a->target, THEIRS);
        put_protocol(o, LOG_FORMAT_COMBINED, a);
    } else {
        put_fixed(o, "-", 1);                   /* no request line was read */
    }
    put_str(o, "\" ");
    put_num(o, (unsigned long long)a->status);
    put_fixed(o, " ", 1);
    put_num(o, a->bytes);
    put_str(o, " \"");
    put_or_dash(o, LOG_FORMAT_COMBINED, a->referer, THEIRS);
    put_str(o, "\" \"");
    put_or_dash(o, LOG_FORMAT_COMBINED, a->ua, THEIRS);
    put_fixed(o, "\"", 1);
}

/* ,"key": then the string escaped in quotes, or null when absent. */
static void
put_json_field(struct line_out *o, const char *key, const char *s, int whose)
{
    put_str(o, ",\"");
    put_str(o, key);
    put_str(o, "\":");
    if (!present(s)) {
        put_str(o, "null");
        return;
    }
    put_fixed(o, "\"", 1);
    put_escaped(o, LOG_FORMAT_JSON, s, whose);
    put_fixed(o, "\"", 1);
}

static void
put_json_num(struct line_out *o, const char *key, unsigned long long v)
{
    put_str(o, ",\"");
    put_str(o, key);
    put_str(o, "\":");
    put_num(o, v);
}

static void
format_json(struct line_out *o, const struct log_access *a, const struct timespec *now)
{
    char ts[32], proto[12] = "HTTP/1.";

    iso_time(now, ts);
    put_str(o, "{\"time\":\"");
    put_fixed(o, ts, 24);
    put_fixed(o, "\"", 1);
    put_json_field(o, "client", a->client, THEIRS);
    put_json_field(o, "method", a->method, THEIRS);
    put_json_field(o, "target", a->target, THEIRS);
    proto[7] = (char)('0' + (a->minor == 0 ? 0 : 1));
    if (a->proto != NULL)                       /* a refused line: as received, or null */
        put_json_field(o, "protocol", a->proto, THEIRS);
    else
        put_json_field(o, "protocol", present(a->method) ? proto : NULL, OURS);
    put_json_field(o, "host", a->host, THEIRS);
    put_json_field(o, "backend", a->backend, OURS);
    put_json_num(o, "status", (unsigned long long)a->status);
    put_json_num(o, "bytes", a->bytes);
    if (a->tunnel)
        put_json_num(o, "up_bytes", a->up_bytes);
    put_str(o, ",\"ms\":");
    put_ms(o, a->us);
    put_json_field(o, "cache", present(a->cache) && strcmp(a->cache, "-") != 0 ? a->cache : NULL,
        OURS);
    put_json_field(o, "ua", a->ua, THEIRS);
    put_json_field(o, "referer", a->referer, THEIRS);
    put_str(o, ",\"tried\":[");
    for (int i = 0; i < a->n_tried && o->len < o->end; i++) {
        if (i > 0)
            put_fixed(o, ",", 1);
        put_fixed(o, "\"", 1);
        put_escaped(o, LOG_FORMAT_JSON, a->tried[i], OURS);
        put_fixed(o, "\"", 1);
    }
    put_fixed(o, "]", 1);
    put_json_field(o, "err", a->err, OURS);
    put_fixed(o, "}", 1);
}

size_t
log_format_access(int format, const struct log_access *a, const struct timespec *now, char *buf,
    size_t cap)
{
    struct line_out o = { buf, cap, cap > LOG_TAIL_ROOM ? cap - LOG_TAIL_ROOM : 0,
        cap > LOG_CLOSE_ROOM ? cap - LOG_CLOSE_ROOM : 0, 0 };

    if (format == LOG_FORMAT_COMBINED)
        format_combined(&o, a, now);
    else if (format == LOG_FORMAT_JSON)
        format_json(&o, a, now);
    else
        format_pibl(&o, a, now);
    return o.len;
}

void
log_reopen(const char *path)
{
    if (!g_started)
        return;
    pthread_mutex_lock(&g_lock);
    snprintf(g_reopen_path, sizeof g_reopen_path, "%s", path);
    g_reopen = 1;
    pthread_cond_signal(&g_have_lines);
    pthread_mutex_unlock(&g_lock);
}

void
log_close(void)
{
    if (!g_started)
        return;
    pthread_mutex_lock(&g_lock);
    g_stopping = 1;
    pthread_cond_broadcast(&g_have_lines);
    pthread_cond_broadcast(&g_have_room);
    pthread_mutex_unlock(&g_lock);
    pthread_join(g_writer, NULL);
    g_started = 0;
    if (g_file_fd != -1)
        close(g_file_fd);
    g_file_fd = -1;
    if (g_err_path[0] != '\0')
        close(g_err_fd);
    g_err_fd = STDERR_FILENO;
    g_err_path[0] = '\0';
}

/*
 * log.cpp - formats log lines and writes them to standard output and the log
 * file from a thread of its own.
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
 * What it does not do: decide what to log (exchange.cpp does), rotate files.
 * Limits: LOG_LINE_MAX bytes per line (longer lines are cut and end in
 * "..."), LOG_QUEUE_BYTES queued; a producer waits when the queue is full
 * rather than dropping a line.
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
#define LOG_BATCH_BYTES (32 * 1024)   /* an event loop's own lines, per turn */
#define LOG_BATCH_MS    5          /* the writer's pause between two writes */

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_have_lines = PTHREAD_COND_INITIALIZER;  /* writer waits */
static pthread_cond_t g_have_room = PTHREAD_COND_INITIALIZER;   /* producers wait */
static char *g_queue;              /* lines waiting for the writer */
static size_t g_queue_len;         /* bytes used in g_queue */
static char *g_spare;              /* the buffer the writer is writing */
static int g_stopping;             /* log_close() was called */
static int g_started;              /* writer thread running */
static int g_file_fd = -1;         /* log file, -1 if it could not be opened */
static int g_stdout_ok = 1;        /* cleared after EPIPE on stdout */
static int g_file_warned;          /* a write error was reported once */
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

/* The writer thread: swap the queue out, write it without the lock. */
static void *
writer_main(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&g_lock);
    for (;;) {
        while (g_queue_len == 0 && !g_stopping && !g_reopen) {
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
            int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
            if (fd == -1) {
                char msg[PATH_MAX + 128];
                int n = snprintf(msg, sizeof msg, "pibl: warning: cannot reopen log file %s: %s\n",
                    path, strerror(errno));
                pibl_write_all(STDERR_FILENO, msg, n > 0 && (size_t)n < sizeof msg ? (size_t)n : 0);
            } else {
                if (g_file_fd != -1)
                    close(g_file_fd);
                g_file_fd = fd;
                g_file_warned = 0;
            }
            pthread_mutex_lock(&g_lock);
            continue;
        }
        if (g_queue_len == 0 && g_stopping)
            break;
        char *buf = g_queue;
        size_t len = g_queue_len;
        g_queue = g_spare;
        g_queue_len = 0;
        g_spare = buf;
        pthread_cond_broadcast(&g_have_room);
        int stopping = g_stopping;
        pthread_mutex_unlock(&g_lock);
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
log_open(const char *path)
{
    g_queue = (char *)malloc(LOG_QUEUE_BYTES);
    g_spare = (char *)malloc(LOG_QUEUE_BYTES);
    if (g_queue == NULL || g_spare == NULL)
        return -1;
    g_file_fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
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
    enqueue(buf, (size_t)n);
    errno = saved_errno;
}

void
log_text(const char *text, size_t len, int cut)
{
    char buf[LOG_LINE_MAX];
    int saved_errno = errno;

    if (len > sizeof buf - 1)
        len = sizeof buf - 1;
    memcpy(buf, text, len);
    if (cut || len == sizeof buf - 1) {
        len = sizeof buf - 2;
        memcpy(buf + len - 3, "...", 3);
    }
    buf[len++] = '\n';
    enqueue(buf, len);
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
    enqueue(buf, len);
    errno = saved_errno;
}

void
log_timestamp(char *buf, size_t len)
{
    static thread_local time_t cached_sec = -1;
    static thread_local char cached[24];   /* "2026-11-27T02:30:04" */
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    if (ts.tv_sec != cached_sec) {
        struct tm tm;
        gmtime_r(&ts.tv_sec, &tm);
        strftime(cached, sizeof cached, "%Y-%m-%dT%H:%M:%S", &tm);
        cached_sec = ts.tv_sec;
    }
    /* By hand: this runs once per exchange. */
    long ms = ts.tv_nsec / 1000000;
    char tail[6] = { '.', (char)('0' + ms / 100), (char)('0' + ms / 10 % 10), (char)('0' + ms % 10),
        'Z', '\0' };
    if (len >= sizeof cached + sizeof tail) {
        size_t n = strlen(cached);
        memcpy(buf, cached, n);
        memcpy(buf + n, tail, sizeof tail);
    } else if (len > 0) {
        buf[0] = '\0';
    }
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
}

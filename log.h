/*
 * log.h - log lines (log.cpp), through queues and a writer thread, so that
 * no request waits on a disk write. Two streams: the access lines (one per
 * exchange, in the log_format chosen) go to standard output and the log
 * file; PIBL's own lines ("pibl: ...": start-up, warnings, reloads, health)
 * go to the error log, which with the pibl format and no error_log is that
 * same pair (interleaved, as before the streams were told apart).
 */
#ifndef PIBL_LOG_H
#define PIBL_LOG_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

#define LOG_LINE_MAX         4096     /* one log line, truncated past this */
#define LOG_TAIL_ROOM        512      /* an access line's room kept for its fixed
                                         parts: a long field is cut short (ending
                                         in "...") so the line always stays whole */

/* The access line formats (config key log_format). */
enum log_format {
    LOG_FORMAT_PIBL = 0,           /* PIBL's one-line key=value format (default) */
    LOG_FORMAT_COMBINED,           /* Apache/nginx "combined" */
    LOG_FORMAT_JSON,               /* one JSON object per line */
};

/* A log_format by its name ("pibl", "combined", "json"), or -1. */
int log_format_parse(const char *name);

/*
 * What one access line says. Strings are as received (this module escapes
 * them for the format); NULL or "" means absent.
 */
struct log_access {
    const char *client;            /* "ip:port" */
    const char *client_ip;         /* the address alone (combined's %h) */
    const char *method, *target, *host, *backend;
    int minor;                     /* HTTP/1.minor of the request */
    const char *proto;             /* else this protocol as received ("": none), or NULL */
    int status;                    /* 0: nothing was answered */
    uint64_t bytes;                /* answer body bytes sent */
    int tunnel;                    /* a WebSocket tunnel: up_bytes is the other way */
    uint64_t up_bytes;
    int64_t us;                    /* duration, microseconds */
    const char *cache;             /* cache status name, "-" = none */
    const char *ua, *referer;      /* User-Agent, Referer */
    const char *const *tried;      /* names of the backends tried, in order */
    int n_tried;
    const char *err;               /* why it failed, NULL = it did not */
};

/*
 * Open the log file (append) and start the writer thread. Access lines go
 * to standard output and the log file, written in format. error_log says
 * where PIBL's own lines go: NULL or "" = the default (with the pibl
 * format, together with the access lines; otherwise standard error),
 * "stderr", "stdout", or a file (append). A file that cannot be opened is
 * a warning on stderr, not an error: PIBL keeps serving (the access lines
 * on standard output, its own lines on stderr).
 * Returns 0, or -1 when the writer thread cannot start.
 */
int log_open(const char *path, int format, const char *error_log);

/*
 * Queue one of PIBL's own lines (a newline is added). Never does I/O
 * itself; waits only when the queue is full. Thread-safe; keeps errno.
 */
void log_line(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Queue one access line, in the format log_open() was given. Thread-safe,
 * keeps errno; batched like any line (log_batch_begin). */
void log_access(const struct log_access *a);

/*
 * Write a's line in format into buf (cap bytes, at least LOG_TAIL_ROOM * 2),
 * timed now (UTC), with no newline. A field too long for the line is cut
 * and ends in "..."; the line stays well formed (quotes closed, valid
 * JSON). Returns its length. (log_access() uses it; so do the unit tests.)
 */
size_t log_format_access(int format, const struct log_access *a, const struct timespec *now,
    char *buf, size_t cap);

/*
 * From log_batch_begin() on, this thread's lines wait in a buffer of its own
 * until log_flush() (or until it fills), so that an event loop takes the
 * queue lock once per turn rather than once per line: two loops taking it
 * per line made each other wait, and a loop that waits holds up all its
 * clients. The thread must call log_flush() before it blocks, and before
 * anything that waits for its lines (a connection it closes may be the one
 * a graceful stop waits for).
 */
void log_batch_begin(void);
void log_flush(void);

/* Queue a multi-line block (header dumps, log_headers) as one unit, each
 * line indented. It goes with PIBL's own lines (never into a combined or
 * JSON access log). */
void log_block(const char *title, const char *text, size_t text_len);

/* Current UTC time as "2026-11-27T02:30:04.123Z" into buf (>= 32 bytes). */
void log_timestamp(char *buf, size_t len);

/* Flush what is queued and stop the writer thread. */
void log_close(void);

/* Reopen the log file at path, and the error log if it is a file
 * (SIGUSR1 after logrotate, or a reload that names another log file); done
 * by the writer thread between two writes, which then writes
 * "pibl: log file reopened (PATH)" to the error log. */
void log_reopen(const char *path);

#endif

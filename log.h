/*
 * log.h - log lines to standard output and the log file (log.cpp), through
 * a queue and a writer thread, so that no request waits on a disk write.
 */
#ifndef PIBL_LOG_H
#define PIBL_LOG_H

#include <stddef.h>

#define LOG_LINE_MAX         4096     /* one log line, truncated past this */

/*
 * Open the log file (append) and start the writer thread. Lines also go to
 * standard output. A log file that cannot be opened is a warning on stderr,
 * not an error: PIBL keeps serving and logs to standard output alone.
 * Returns 0, or -1 when the writer thread cannot start.
 */
int log_open(const char *path);

/*
 * Queue one line (a newline is added). Never does I/O itself; waits only when
 * the queue is full. Thread-safe; keeps errno.
 */
void log_line(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

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

/* Queue one line already formatted (len bytes, no newline); cut says it
 * was cut short, and it then ends in "...", as log_line() does. */
void log_text(const char *text, size_t len, int cut);

/* Queue a multi-line block (header dumps) as one unit, each line indented. */
void log_block(const char *title, const char *text, size_t text_len);

/* Current UTC time as "2026-11-27T02:30:04.123Z" into buf (>= 32 bytes). */
void log_timestamp(char *buf, size_t len);

/* Flush what is queued and stop the writer thread. */
void log_close(void);

/* Reopen the log file at path (SIGUSR1 after logrotate, or a reload that
 * names another file); done by the writer thread between two writes. */
void log_reopen(const char *path);

#endif

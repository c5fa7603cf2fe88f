/*
 * loadgen.c -- the ping-pong load generator of pollchat's benchmark suite.
 *
 * Compiled at bench time with the machine's gcc (see bench/loadgen.py), so
 * that the client of the idle-scaling, concurrency and memory workloads is
 * cheap enough for the *server* to be what is measured.  bench/clients.py
 * has a Python twin with the same command line and output, used when gcc is
 * missing.
 *
 *   loadgen pingpong --port P [--host 127.0.0.1] [--conns 1] [--idle 0]
 *                    [--warmup 0.5] [--duration 2] [--line-size 16]
 *                    [--timeout 60] [--batch 500] [--sync]
 *
 * 1. Opens --idle connections, in batches of --batch; each sends one line and
 *    waits for its echo (so the server has accepted and registered it), then
 *    stays open and silent.
 * 2. Opens --conns active connections.
 * 3. With --sync, prints the "ready" event and waits for a line on stdin
 *    (the harness samples the server's memory meanwhile).
 * 4. Every active connection does sequential ping-pong: send one line of
 *    --line-size bytes (newline included), wait for the whole echo, repeat.
 *    Round trips are counted during --duration seconds after --warmup.
 *
 * Output: one JSON object per line on stdout ("event": ready, start, end,
 * result).  Every loop is bounded in time: a phase that makes no progress
 * for --timeout seconds ends the run with an error result.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_EVENTS 1024
#define RECV_SIZE 65536

typedef struct {
    const char *host;
    int port;
    int conns;
    int idle;
    double warmup;
    double duration;
    int line_size;
    double timeout;
    int batch;
    int sync;
} options_t;

enum { CONNECTING, WAITING, DONE };

typedef struct {
    int fd;
    int state;
    long got; /* bytes of the current echo received so far */
} conn_t;

static char error_text[512];

/* Record the first error; later ones are consequences of it. */
static int fail(const char *fmt, ...)
{
    if (error_text[0] == '\0') {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(error_text, sizeof error_text, fmt, ap);
        va_end(ap);
    }
    return -1;
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static double cpu_seconds(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

static void emit(const char *event)
{
    printf("{\"event\": \"%s\"}\n", event);
    fflush(stdout);
}

static void raise_nofile_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

static double parse_double(const char *text, const char *name)
{
    char *end;
    double value = strtod(text, &end);
    if (*text == '\0' || *end != '\0' || value < 0) {
        fprintf(stderr, "loadgen: bad value for %s: %s\n", name, text);
        exit(2);
    }
    return value;
}

static void parse_options(int argc, char **argv, options_t *opt)
{
    *opt = (options_t){"127.0.0.1", 0, 1, 0, 0.5, 2.0, 16, 60.0, 500, 0};
    if (argc < 2 || strcmp(argv[1], "pingpong") != 0) {
        fprintf(stderr, "usage: loadgen pingpong --port P [options]\n");
        exit(2);
    }
    for (int i = 2; i < argc; i++) {
        const char *key = argv[i];
        if (strcmp(key, "--sync") == 0) {
            opt->sync = 1;
            continue;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "loadgen: %s needs a value\n", key);
            exit(2);
        }
        const char *val = argv[++i];
        if (strcmp(key, "--host") == 0) opt->host = val;
        else if (strcmp(key, "--port") == 0) opt->port = (int)parse_double(val, key);
        else if (strcmp(key, "--conns") == 0) opt->conns = (int)parse_double(val, key);
        else if (strcmp(key, "--idle") == 0) opt->idle = (int)parse_double(val, key);
        else if (strcmp(key, "--warmup") == 0) opt->warmup = parse_double(val, key);
        else if (strcmp(key, "--duration") == 0) opt->duration = parse_double(val, key);
        else if (strcmp(key, "--line-size") == 0) opt->line_size = (int)parse_double(val, key);
        else if (strcmp(key, "--timeout") == 0) opt->timeout = parse_double(val, key);
        else if (strcmp(key, "--batch") == 0) opt->batch = (int)parse_double(val, key);
        else {
            fprintf(stderr, "loadgen: unknown option %s\n", key);
            exit(2);
        }
    }
    if (opt->port <= 0 || opt->line_size < 2 || opt->line_size > RECV_SIZE || opt->batch < 1) {
        fprintf(stderr, "loadgen: need --port, 2 <= --line-size <= %d, --batch >= 1\n",
                RECV_SIZE);
        exit(2);
    }
}

static int new_socket(const options_t *opt, struct sockaddr_in *addr)
{
    memset(addr, 0, sizeof *addr);
    addr->sin_family = AF_INET;
    addr->sin_port = htons((unsigned short)opt->port);
    if (inet_pton(AF_INET, opt->host, &addr->sin_addr) != 1)
        return fail("bad host %s", opt->host);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return fail("socket(): %s", strerror(errno));
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

/* Start a non-blocking connect; the socket is registered for EPOLLOUT. */
static int start_connect(const options_t *opt, int ep, conn_t *c, unsigned index)
{
    struct sockaddr_in addr;
    c->fd = new_socket(opt, &addr);
    if (c->fd < 0)
        return -1;
    if (connect(c->fd, (struct sockaddr *)&addr, sizeof addr) < 0 && errno != EINPROGRESS)
        return fail("connect(): %s", strerror(errno));
    c->state = CONNECTING;
    c->got = 0;
    struct epoll_event ev = {.events = EPOLLOUT, .data.u32 = index};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev) < 0)
        return fail("epoll_ctl(ADD): %s", strerror(errno));
    return 0;
}

static int send_line(conn_t *c, const char *line, int size, const char *what)
{
    ssize_t n = send(c->fd, line, (size_t)size, MSG_NOSIGNAL);
    if (n != size)
        return fail("send on %s connection: %s", what, n < 0 ? strerror(errno) : "short send");
    c->got = 0;
    return 0;
}

/*
 * Read what is there.  Returns the number of complete echoes of `size`
 * bytes received (0 or 1 in sequential ping-pong), or -1 on error.  Stops
 * at the first complete echo: in sequential ping-pong nothing can follow
 * it, and a recv() that would only say EAGAIN is a third of the client's
 * system calls (epoll is level-triggered: anything left is reported again).
 */
static int read_echo(conn_t *c, int size, const char *what)
{
    static char buf[RECV_SIZE];
    int complete = 0;
    for (;;) {
        ssize_t n = recv(c->fd, buf, sizeof buf, 0);
        if (n > 0) {
            c->got += n;
            while (c->got >= size) {
                c->got -= size;
                complete++;
            }
            if (complete)
                return complete;
            continue;
        }
        if (n == 0)
            return fail("server closed a%s %s connection", what[0] == 'i' ? "n" : "", what);
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return complete;
        if (errno == EINTR)
            continue;
        return fail("recv on %s connection: %s", what, strerror(errno));
    }
}

/* One event of the connection phase: connect done -> send; echo -> done. */
static int advance_connection(conn_t *c, uint32_t events, const char *line, int size,
                              const char *what)
{
    if (c->state == CONNECTING) {
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err || (events & EPOLLERR))
            return fail("connect on %s connection: %s", what, strerror(err ? err : ECONNREFUSED));
        if (send_line(c, line, size, what) < 0)
            return -1;
        return 1; /* the caller switches the interest to EPOLLIN */
    }
    int n = read_echo(c, size, what);
    if (n < 0)
        return -1;
    if (n > 0)
        c->state = DONE;
    return 0;
}

/*
 * Open conns[lo..hi) and wait until each has had one round trip.  Leaves
 * them registered for EPOLLIN when keep_registered, else unregistered.
 */
static int open_batch(const options_t *opt, int ep, conn_t *conns, int lo, int hi,
                      const char *line, int size, const char *what, int keep_registered)
{
    for (int i = lo; i < hi; i++)
        if (start_connect(opt, ep, &conns[i], (unsigned)i) < 0)
            return fail("while opening %s connection #%d", what, i + 1);
    int pending = hi - lo;
    double last_progress = now();
    struct epoll_event evs[MAX_EVENTS];
    while (pending > 0) {
        int n = epoll_wait(ep, evs, MAX_EVENTS, 100);
        if (n < 0 && errno != EINTR)
            return fail("epoll_wait: %s", strerror(errno));
        for (int k = 0; k < n; k++) {
            unsigned idx = evs[k].data.u32;
            conn_t *c = &conns[idx];
            int rc = advance_connection(c, evs[k].events, line, size, what);
            if (rc < 0) {
                char first[400];
                snprintf(first, sizeof first, "%.399s", error_text);
                snprintf(error_text, sizeof error_text, "%s (#%u of %d, %d already open)",
                         first, idx + 1, what[0] == 'i' ? opt->idle : opt->conns, lo);
                return -1;
            }
            if (rc == 1) {
                struct epoll_event ev = {.events = EPOLLIN, .data.u32 = idx};
                epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
                c->state = WAITING;
            } else if (c->state == DONE) {
                pending--;
                if (!keep_registered)
                    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
            }
            last_progress = now();
        }
        if (now() - last_progress > opt->timeout)
            return fail("no progress for %.0f s while opening %s connections (%d of batch "
                        "pending, %d already open)", opt->timeout, what, pending, lo);
    }
    return 0;
}

static int open_all(const options_t *opt, int ep, conn_t *conns, int count, const char *line,
                    int size, const char *what, int keep_registered)
{
    for (int lo = 0; lo < count; lo += opt->batch) {
        int hi = lo + opt->batch < count ? lo + opt->batch : count;
        if (open_batch(opt, ep, conns, lo, hi, line, size, what, keep_registered) < 0)
            return -1;
    }
    return 0;
}

static void wait_for_go(void)
{
    char buf[64];
    if (fgets(buf, sizeof buf, stdin) == NULL) {
        /* harness gone or stdin closed: carry on, the run is bounded anyway */
    }
}

typedef struct {
    long round_trips;
    double seconds;
    double cpu;
} measured_t;

/* Sequential ping-pong on every active connection for warmup + duration. */
static int pingpong(const options_t *opt, int ep, conn_t *active, const char *line,
                    measured_t *out)
{
    *out = (measured_t){0, 0, 0};
    if (opt->conns == 0) { /* nothing to measure: only the idle connections */
        emit("start");
        emit("end");
        return 0;
    }
    for (int i = 0; i < opt->conns; i++)
        if (send_line(&active[i], line, opt->line_size, "active") < 0)
            return -1;
    double t0 = now(), start = 0, last_progress = t0, cpu0 = 0;
    int measuring = 0;
    long count = 0;
    struct epoll_event evs[MAX_EVENTS];
    for (;;) {
        double t = now();
        if (!measuring && t - t0 >= opt->warmup) {
            emit("start");
            measuring = 1;
            start = now();
            cpu0 = cpu_seconds();
        }
        if (measuring && t - start >= opt->duration)
            break;
        int n = epoll_wait(ep, evs, MAX_EVENTS, 50);
        if (n < 0 && errno != EINTR)
            return fail("epoll_wait: %s", strerror(errno));
        for (int k = 0; k < n; k++) {
            conn_t *c = &active[evs[k].data.u32];
            int done = read_echo(c, opt->line_size, "active");
            if (done < 0)
                return -1;
            if (done == 0)
                continue;
            if (measuring)
                count += done;
            if (send_line(c, line, opt->line_size, "active") < 0)
                return -1;
            last_progress = now();
        }
        if (now() - last_progress > opt->timeout)
            return fail("no echo for %.0f s (server stalled?)", opt->timeout);
    }
    out->seconds = now() - start;
    out->cpu = cpu_seconds() - cpu0;
    out->round_trips = count;
    emit("end");
    return 0;
}

static char *make_line(int size)
{
    char *line = malloc((size_t)size);
    if (line == NULL)
        return NULL;
    memset(line, 'x', (size_t)size - 1);
    line[size - 1] = '\n';
    return line;
}

int main(int argc, char **argv)
{
    options_t opt;
    parse_options(argc, argv, &opt);
    raise_nofile_limit();
    conn_t *idle = calloc((size_t)opt.idle + 1, sizeof *idle);
    conn_t *active = calloc((size_t)opt.conns + 1, sizeof *active);
    char *line = make_line(opt.line_size);
    char *hello = make_line(2);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    measured_t m = {0, 0, 0};
    int ok = idle && active && line && hello && ep >= 0;
    if (!ok)
        fail("out of memory or epoll_create1 failed");
    else if (open_all(&opt, ep, idle, opt.idle, hello, 2, "idle", 0) < 0)
        ok = 0;
    else if (open_all(&opt, ep, active, opt.conns, hello, 2, "active", 1) < 0)
        ok = 0;
    if (ok && opt.sync) {
        printf("{\"event\": \"ready\", \"idle\": %d, \"conns\": %d}\n", opt.idle, opt.conns);
        fflush(stdout);
        wait_for_go();
    }
    if (ok && pingpong(&opt, ep, active, line, &m) < 0)
        ok = 0;
    if (ok) {
        double rate = m.seconds > 0 ? m.round_trips / m.seconds : 0;
        printf("{\"event\": \"result\", \"ok\": true, \"client\": \"c\", \"round_trips\": %ld, "
               "\"seconds\": %.6f, \"rate\": %.3f, \"cpu_seconds\": %.6f, \"idle\": %d, "
               "\"conns\": %d, \"line_size\": %d}\n",
               m.round_trips, m.seconds, rate, m.cpu, opt.idle, opt.conns, opt.line_size);
    } else {
        printf("{\"event\": \"result\", \"ok\": false, \"client\": \"c\", \"error\": \"");
        for (const char *p = error_text; *p; p++)
            if (*p == '"' || *p == '\\')
                printf("\\%c", *p);
            else if ((unsigned char)*p >= 0x20)
                putchar(*p);
        printf("\"}\n");
    }
    fflush(stdout);
    return ok ? 0 : 1;
}

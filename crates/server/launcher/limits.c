/* batchgate-limits: sets resource limits on itself, then runs the program, so the limits
 * hold from the program's first instruction; with `contain`, it also ends every process
 * the program started when the program ends.
 * Usage: batchgate-limits [RESOURCE=SOFT[:HARD]]... [contain] [grace=MS] -- PROGRAM [ARG]...
 *        batchgate-limits kill-all
 * RESOURCE is core, cpu, as, fsize, nofile or nproc; without HARD both limits are SOFT (a
 * CPU limit has a higher hard limit, so that SIGXCPU arrives before SIGKILL). The program
 * is found on PATH like execvp(3) (PATH unset: /usr/bin:/bin), but a file that is not an
 * executable format is never handed to a shell. Exits 127 if it cannot run it.
 *
 * `contain`: the wrapper becomes a child subreaper (every orphaned descendant, whatever
 * session or process group it moved to, becomes its child), runs the program as its child
 * and waits. When the program ends, every remaining descendant is killed (a daemon cannot
 * outlive its job or hold its output pipes open); on SIGTERM, SIGINT, SIGHUP or SIGQUIT the
 * program gets SIGTERM and, after `grace` milliseconds, everything is killed. The wrapper
 * then exits as the program did (same exit status, or the same signal).
 *
 * `kill-all`: SIGKILL to every process of the wrapper's own user but itself, in one atomic
 * kill(-1) that a fork bomb cannot outrun. The server runs it as a job's own uid.
 *
 * It runs before every job's program, so it is built without the C library where it can
 * be (Linux on x86-64 and AArch64: raw system calls and its own entry point). A C
 * library's start-up asks the CPU for its cache sizes with cpuid, which a virtual machine
 * traps: measured on a 2-vCPU VM, a statically linked glibc made this wrapper cost 0.6 ms
 * of CPU per start, as much as a small program's whole run; without it, 0.06 ms. With
 * -DBATCHGATE_LIMITS_LIBC the same code runs on the C library (build.rs falls back to it
 * on other targets). */

#define SUBREAPER 36 /* PR_SET_CHILD_SUBREAPER */
#define NO_HANG 1     /* WNOHANG */

struct span { long seconds; long nanoseconds; };

#ifdef BATCHGATE_LIMITS_LIBC

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

typedef sigset_t signals;
#define BLOCK SIG_BLOCK
#define UNBLOCK SIG_UNBLOCK
#define SET_MASK SIG_SETMASK
#define RESULT(call) ((call) < 0 ? -errno : 0)

static long set_limit(int resource, unsigned long long soft, unsigned long long hard) {
    struct rlimit limit = {(rlim_t)soft, (rlim_t)hard};
    return RESULT(setrlimit(resource, &limit));
}
static long exec_file(const char *path, char **argv, char **envp) {
    execve(path, argv, envp);
    return -errno;
}
static void put(const char *text, unsigned long length) { (void)!write(2, text, length); }
static long fork_process(void) { long pid = fork(); return pid < 0 ? -errno : pid; }
static long wait_child(long pid, int *status, int options) {
    long got = waitpid((pid_t)pid, status, options);
    return got < 0 ? -errno : got;
}
static long send_signal(long pid, int signal) { return RESULT(kill((pid_t)pid, signal)); }
static long own_pid(void) { return getpid(); }
static long become_subreaper(void) { return RESULT(prctl(SUBREAPER, 1, 0, 0, 0)); }
static void signals_empty(signals *set) { sigemptyset(set); }
static void signals_add(signals *set, int signal) { sigaddset(set, signal); }
static long mask_signals(int how, const signals *set, signals *old) {
    return RESULT(sigprocmask(how, set, old));
}
static long wait_signal(const signals *set, const struct span *timeout) {
    struct timespec limit;
    if (timeout) { limit.tv_sec = timeout->seconds; limit.tv_nsec = timeout->nanoseconds; }
    int got = timeout ? sigtimedwait(set, 0, &limit) : sigwaitinfo(set, 0);
    return got < 0 ? -errno : got;
}
static long open_file(const char *path) { int fd = open(path, O_RDONLY); return fd < 0 ? -errno : fd; }
static long read_file(long fd, char *buffer, unsigned long size) {
    long got = read((int)fd, buffer, size);
    return got < 0 ? -errno : got;
}
static void close_file(long fd) { close((int)fd); }
static long now_ms(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return now.tv_sec * 1000 + now.tv_nsec / 1000000;
}
static void leave(int status) { _exit(status); }

#else

#include <asm/unistd.h>
#include <linux/errno.h>
#include <linux/resource.h>
#include <linux/signal.h>

#define BLOCK 0   /* SIG_BLOCK */
#define UNBLOCK 1 /* SIG_UNBLOCK */
#define SET_MASK 2

static long syscall4(long number, long a, long b, long c, long d) {
#if defined(__x86_64__)
    long result;
    register long r10 __asm__("r10") = d;
    __asm__ volatile("syscall"
                     : "=a"(result)
                     : "a"(number), "D"(a), "S"(b), "d"(c), "r"(r10)
                     : "rcx", "r11", "memory");
    return result;
#elif defined(__aarch64__)
    register long x8 __asm__("x8") = number;
    register long x0 __asm__("x0") = a;
    register long x1 __asm__("x1") = b;
    register long x2 __asm__("x2") = c;
    register long x3 __asm__("x3") = d;
    __asm__ volatile("svc 0" : "+r"(x0) : "r"(x8), "r"(x1), "r"(x2), "r"(x3) : "memory");
    return x0;
#else
#error "raw system calls are written for x86-64 and AArch64 only; build with -DBATCHGATE_LIMITS_LIBC"
#endif
}

typedef unsigned long signals; /* the kernel's sigset_t: one bit per signal */
#define SIGNALS_SIZE 8

static long set_limit(int resource, unsigned long long soft, unsigned long long hard) {
    struct rlimit64 limit = {soft, hard};
    return syscall4(__NR_prlimit64, 0, resource, (long)&limit, 0);
}
static long exec_file(const char *path, char **argv, char **envp) {
    return syscall4(__NR_execve, (long)path, (long)argv, (long)envp, 0);
}
static void put(const char *text, unsigned long length) {
    syscall4(__NR_write, 2, (long)text, (long)length, 0);
}
/* clone(SIGCHLD) is fork(2); the child returns here on a copy of this stack. */
static long fork_process(void) { return syscall4(__NR_clone, SIGCHLD, 0, 0, 0); }
static long wait_child(long pid, int *status, int options) {
    return syscall4(__NR_wait4, pid, (long)status, options, 0);
}
static long send_signal(long pid, int signal) { return syscall4(__NR_kill, pid, signal, 0, 0); }
static long own_pid(void) { return syscall4(__NR_getpid, 0, 0, 0, 0); }
static long become_subreaper(void) { return syscall4(__NR_prctl, SUBREAPER, 1, 0, 0); }
static void signals_empty(signals *set) { *set = 0; }
static void signals_add(signals *set, int signal) { *set |= 1UL << (signal - 1); }
static long mask_signals(int how, const signals *set, signals *old) {
    return syscall4(__NR_rt_sigprocmask, how, (long)set, (long)old, SIGNALS_SIZE);
}
static long wait_signal(const signals *set, const struct span *timeout) {
    return syscall4(__NR_rt_sigtimedwait, (long)set, 0, (long)timeout, SIGNALS_SIZE);
}
static long open_file(const char *path) {
    return syscall4(__NR_openat, -100 /* AT_FDCWD */, (long)path, 0 /* O_RDONLY */, 0);
}
static long read_file(long fd, char *buffer, unsigned long size) {
    return syscall4(__NR_read, fd, (long)buffer, (long)size, 0);
}
static void close_file(long fd) { syscall4(__NR_close, fd, 0, 0, 0); }
static long now_ms(void) {
    struct span now = {0, 0};
    syscall4(__NR_clock_gettime, 1 /* CLOCK_MONOTONIC */, (long)&now, 0, 0);
    return now.seconds * 1000 + now.nanoseconds / 1000000;
}
static void leave(int status) {
    for (;;) syscall4(__NR_exit_group, status, 0, 0, 0);
}

#endif

static unsigned long length_of(const char *text) {
    unsigned long length = 0;
    while (text[length]) length++;
    return length;
}

static int starts_with(const char *text, const char *prefix) {
    while (*prefix && *text == *prefix) text++, prefix++;
    return *prefix == '\0';
}

static void say(const char *text) { put(text, length_of(text)); }

/* The decimal digits of n >= 0, written at the end of `digits` (24 bytes). */
static const char *decimal(long n, char *digits) {
    int at = 23;
    digits[at] = '\0';
    do {
        digits[--at] = (char)('0' + n % 10);
        n /= 10;
    } while (n > 0);
    return digits + at;
}

/* "batchgate-limits: WHAT SUBJECT: REASON\n" (REASON from a negative errno, if any). */
static void complain(const char *what, const char *subject, long error) {
    static const struct { int number; const char *text; } reasons[] = {
        {ENOENT, "no such file or directory"}, {EACCES, "permission denied"},
        {ENOEXEC, "exec format error"},        {EPERM, "operation not permitted"},
        {EINVAL, "invalid argument"},          {E2BIG, "argument list too long"},
        {ENOMEM, "out of memory"},             {ETXTBSY, "text file busy"},
        {ENAMETOOLONG, "file name too long"},  {ENOTDIR, "not a directory"},
    };
    say("batchgate-limits: ");
    say(what);
    say(subject);
    if (error < 0) {
        const char *reason = 0;
        for (unsigned long i = 0; i < sizeof reasons / sizeof reasons[0]; i++) {
            if (reasons[i].number == -error) reason = reasons[i].text;
        }
        say(": ");
        if (reason) {
            say(reason);
        } else {
            char digits[24];
            say("error ");
            say(decimal(-error, digits));
        }
    }
    say("\n");
}

static int resource_of(const char *name, unsigned long length) {
    static const struct { const char *name; int resource; } known[] = {
        {"core", RLIMIT_CORE}, {"cpu", RLIMIT_CPU}, {"as", RLIMIT_AS},
        {"fsize", RLIMIT_FSIZE}, {"nofile", RLIMIT_NOFILE}, {"nproc", RLIMIT_NPROC},
    };
    for (unsigned long i = 0; i < sizeof known / sizeof known[0]; i++) {
        if (length_of(known[i].name) == length && starts_with(name, known[i].name)) {
            return known[i].resource;
        }
    }
    return -1;
}

/* DIGITS → value; 0 if it is not that. */
static int parse_number(const char *text, unsigned long length, unsigned long long *value) {
    if (length == 0) return 0;
    unsigned long long parsed = 0;
    for (unsigned long i = 0; i < length; i++) {
        unsigned d = (unsigned)(text[i] - '0');
        if (d > 9 || parsed > (~0ULL - d) / 10) return 0;
        parsed = parsed * 10 + d;
    }
    *value = parsed;
    return 1;
}

/* "NAME=SOFT[:HARD]" → its resource and values; -1 if it is not that. */
static int parse_limit(const char *option, unsigned long long *soft, unsigned long long *hard) {
    unsigned long name = 0;
    while (option[name] && option[name] != '=') name++;
    if (option[name] != '=') return -1;
    const char *value = option + name + 1;
    unsigned long colon = 0;
    while (value[colon] && value[colon] != ':') colon++;
    if (!parse_number(value, colon, soft)) return -1;
    *hard = *soft;
    if (value[colon] == ':' && !parse_number(value + colon + 1, length_of(value + colon + 1), hard)) {
        return -1;
    }
    if (*hard < *soft) return -1;
    return resource_of(option, name);
}

/* execvp(3) without its shell fallback: a name without '/' is tried in each PATH entry;
 * returns the negative errno of the attempt that explains the failure. */
static long exec_program(char **argv, char **envp) {
    const char *name = argv[0];
    unsigned long name_length = length_of(name);
    for (unsigned long i = 0; i < name_length; i++) {
        if (name[i] == '/') return exec_file(name, argv, envp);
    }
    const char *path = "/usr/bin:/bin";
    for (char **variable = envp; *variable; variable++) {
        if (starts_with(*variable, "PATH=")) path = *variable + 5;
    }
    long error = -ENOENT;
    int denied = 0;
    char file[4096];
    for (const char *entry = path;; entry++) {
        const char *end = entry;
        while (*end && *end != ':') end++;
        unsigned long dir = (unsigned long)(end - entry);
        if (dir + 1 + name_length < sizeof file) {
            unsigned long at = 0;
            for (unsigned long i = 0; i < dir; i++) file[at++] = entry[i];
            if (dir > 0) file[at++] = '/';
            for (unsigned long i = 0; i <= name_length; i++) file[at++] = name[i];
            error = exec_file(file, argv, envp);
            if (error == -EACCES) {
                denied = 1;
            } else if (error != -ENOENT && error != -ENOTDIR) {
                return error;
            }
        } else {
            error = -ENAMETOOLONG;
        }
        if (*end == '\0') break;
        entry = end;
    }
    return denied ? -EACCES : error;
}

/* SIGKILL to every child of this process until none is left: a killed child's own
 * children are orphaned to this subreaper and found on the next round. Returns the wait
 * status of `program` if it was still running. Without /proc's list of children (a
 * kernel without CONFIG_PROC_CHILDREN), only the program is killed and the wrapper does
 * not wait for the rest: it must not hang on a daemon it cannot name (the server still
 * kills the process group, and with a job's own uid every process of it). */
static int kill_descendants(long program, int status) {
    char digits[24];
    char path[64] = "/proc/self/task/";
    unsigned long at = length_of(path);
    const char *pid = decimal(own_pid(), digits);
    while (*pid) path[at++] = *pid++;
    const char *tail = "/children";
    while (*tail) path[at++] = *tail++;
    path[at] = '\0';
    for (;;) {
        long fd = open_file(path);
        if (fd >= 0) {
            char list[4096];
            long got;
            long child = 0;
            while ((got = read_file(fd, list, sizeof list)) > 0) {
                for (long i = 0; i < got; i++) {
                    if (list[i] >= '0' && list[i] <= '9') {
                        child = child * 10 + (list[i] - '0');
                    } else if (child > 0) {
                        send_signal(child, SIGKILL);
                        child = 0;
                    }
                }
            }
            if (child > 0) send_signal(child, SIGKILL);
            close_file(fd);
        } else {
            /* The program (if the grace period ran out) is waited for; nothing else is. */
            int ended = 0;
            if (send_signal(program, SIGKILL) == 0 && wait_child(program, &ended, 0) == program) {
                status = ended;
            }
            while (wait_child(-1, &ended, NO_HANG) > 0) {
            }
            return status;
        }
        int ended = 0;
        long reaped = wait_child(-1, &ended, 0);
        if (reaped == -ECHILD) return status;
        if (reaped == program) status = ended;
    }
}

static int contain(char **argv, char **envp, long grace_ms) {
    long error = become_subreaper();
    if (error < 0) {
        complain("cannot contain ", argv[0], error);
        return 127;
    }
    signals stops, old;
    signals_empty(&stops);
    int stop_signals[] = {SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGCHLD};
    for (unsigned long i = 0; i < sizeof stop_signals / sizeof stop_signals[0]; i++) {
        signals_add(&stops, stop_signals[i]);
    }
    mask_signals(BLOCK, &stops, &old);
    long program = fork_process();
    if (program == 0) {
        mask_signals(SET_MASK, &old, 0);
        complain("cannot run ", argv[0], exec_program(argv, envp));
        leave(127);
    }
    if (program < 0) {
        complain("cannot start ", argv[0], program);
        return 127;
    }
    int status = 0;
    int ended = 0;
    long deadline = -1;
    while (!ended) {
        int got = 0;
        long reaped;
        while ((reaped = wait_child(-1, &got, NO_HANG)) > 0) {
            if (reaped == program) {
                status = got;
                ended = 1;
            }
        }
        if (ended) break;
        struct span left = {0, 0};
        if (deadline >= 0) {
            long ms = deadline - now_ms();
            if (ms <= 0) break;
            left.seconds = ms / 1000;
            left.nanoseconds = (ms % 1000) * 1000000;
        }
        long signal = wait_signal(&stops, deadline >= 0 ? &left : 0);
        if (signal > 0 && signal != SIGCHLD && deadline < 0) {
            send_signal(program, SIGTERM);
            send_signal(-program, SIGTERM);
            deadline = now_ms() + grace_ms;
        }
    }
    status = kill_descendants(program, status);
    if ((status & 0x7f) == 0) return (status >> 8) & 0xff;
    /* Ends the same way as the program, so that the server sees the signal. */
    int signal = status & 0x7f;
    signals own;
    signals_empty(&own);
    signals_add(&own, signal);
    mask_signals(UNBLOCK, &own, 0);
    send_signal(own_pid(), signal);
    return 128 + signal;
}

static int run(int argc, char **argv, char **envp) {
    if (argc == 2 && starts_with(argv[1], "kill-all") && argv[1][8] == '\0') {
        long error = send_signal(-1, SIGKILL);
        return error < 0 && error != -ESRCH ? 1 : 0;
    }
    int contained = 0;
    unsigned long long grace_ms = 0;
    int i = 1;
    for (; i < argc && !(starts_with(argv[i], "--") && argv[i][2] == '\0'); i++) {
        if (starts_with(argv[i], "contain") && argv[i][7] == '\0') {
            contained = 1;
            continue;
        }
        if (starts_with(argv[i], "grace=")) {
            if (!parse_number(argv[i] + 6, length_of(argv[i] + 6), &grace_ms) ||
                grace_ms > 86400000ULL) {
                complain("bad option ", argv[i], 0);
                return 127;
            }
            continue;
        }
        unsigned long long soft = 0, hard = 0;
        int resource = parse_limit(argv[i], &soft, &hard);
        if (resource < 0) {
            complain("bad limit ", argv[i], 0);
            return 127;
        }
        long error = set_limit(resource, soft, hard);
        if (error < 0) {
            complain("cannot set ", argv[i], error);
            return 127;
        }
    }
    if (i + 1 >= argc) {
        say("usage: batchgate-limits RESOURCE=SOFT[:HARD]... [contain] [grace=MS] -- PROGRAM [ARG]...\n");
        return 127;
    }
    if (contained) return contain(argv + i + 1, envp, (long)grace_ms);
    complain("cannot run ", argv[i + 1], exec_program(argv + i + 1, envp));
    return 127;
}

#ifdef BATCHGATE_LIMITS_LIBC

extern char **environ;
int main(int argc, char **argv) { return run(argc, argv, environ); }

#else

/* The kernel starts the program with argc, argv..., 0, envp..., 0 on the stack. */
__attribute__((noreturn, used)) void batchgate_limits_start(long *stack) {
    int argc = (int)stack[0];
    char **argv = (char **)(stack + 1);
    int status = run(argc, argv, argv + argc + 1);
    for (;;) syscall4(__NR_exit_group, status, 0, 0, 0);
}

#if defined(__x86_64__)
__asm__(".text\n.global _start\n_start:\n"
        "  xor %rbp, %rbp\n  mov %rsp, %rdi\n  and $-16, %rsp\n"
        "  call batchgate_limits_start\n  hlt\n");
#elif defined(__aarch64__)
__asm__(".text\n.global _start\n_start:\n"
        "  mov x29, #0\n  mov x30, #0\n  mov x0, sp\n"
        "  bl batchgate_limits_start\n");
#endif

#endif

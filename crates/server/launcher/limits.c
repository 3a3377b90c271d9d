/* batchgate-limits: sets resource limits on itself, then executes the program, so the
 * limits hold from the program's first instruction.
 * Usage: batchgate-limits RESOURCE=VALUE... -- PROGRAM [ARG]...
 * RESOURCE is core, cpu, as, fsize, nofile or nproc; soft and hard limits are both set to
 * VALUE. The program is found on PATH like execvp(3) (PATH unset: /usr/bin:/bin), but a
 * file that is not an executable format is never handed to a shell. Exits 127 if it
 * cannot run it.
 *
 * It runs before every job's program, so it is built without the C library where it can
 * be (Linux on x86-64 and AArch64: raw system calls and its own entry point). A C
 * library's start-up asks the CPU for its cache sizes with cpuid, which a virtual machine
 * traps: measured on a 2-vCPU VM, a statically linked glibc made this wrapper cost 0.6 ms
 * of CPU per start, as much as a small program's whole run; without it, 0.06 ms. With
 * -DBATCHGATE_LIMITS_LIBC the same code runs on the C library (build.rs falls back to it
 * on other targets). */

#ifdef BATCHGATE_LIMITS_LIBC

#include <errno.h>
#include <sys/resource.h>
#include <unistd.h>

static long set_limit(int resource, unsigned long long value) {
    struct rlimit limit = {(rlim_t)value, (rlim_t)value};
    return setrlimit(resource, &limit) == 0 ? 0 : -errno;
}
static long exec_file(const char *path, char **argv, char **envp) {
    execve(path, argv, envp);
    return -errno;
}
static void put(const char *text, unsigned long length) { (void)!write(2, text, length); }

#else

#include <asm/unistd.h>
#include <linux/errno.h>
#include <linux/resource.h>

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

static long set_limit(int resource, unsigned long long value) {
    struct rlimit64 limit = {value, value};
    return syscall4(__NR_prlimit64, 0, resource, (long)&limit, 0);
}
static long exec_file(const char *path, char **argv, char **envp) {
    return syscall4(__NR_execve, (long)path, (long)argv, (long)envp, 0);
}
static void put(const char *text, unsigned long length) {
    syscall4(__NR_write, 2, (long)text, (long)length, 0);
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
            int at = sizeof digits;
            digits[--at] = '\0';
            for (long n = -error; n > 0 || at == (int)sizeof digits - 1; n /= 10) {
                digits[--at] = (char)('0' + n % 10);
            }
            say("error ");
            say(digits + at);
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

/* "NAME=DIGITS" → its resource and value; -1 if it is not that. */
static int parse_limit(const char *option, unsigned long long *value) {
    unsigned long name = 0;
    while (option[name] && option[name] != '=') name++;
    if (option[name] != '=' || option[name + 1] == '\0') return -1;
    unsigned long long parsed = 0;
    for (const char *digit = option + name + 1; *digit; digit++) {
        unsigned d = (unsigned)(*digit - '0');
        if (d > 9 || parsed > (~0ULL - d) / 10) return -1;
        parsed = parsed * 10 + d;
    }
    *value = parsed;
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

static int run(int argc, char **argv, char **envp) {
    int i = 1;
    for (; i < argc && !(starts_with(argv[i], "--") && argv[i][2] == '\0'); i++) {
        unsigned long long value = 0;
        int resource = parse_limit(argv[i], &value);
        if (resource < 0) {
            complain("bad limit ", argv[i], 0);
            return 127;
        }
        long error = set_limit(resource, value);
        if (error < 0) {
            complain("cannot set ", argv[i], error);
            return 127;
        }
    }
    if (i + 1 >= argc) {
        say("usage: batchgate-limits RESOURCE=VALUE... -- PROGRAM [ARG]...\n");
        return 127;
    }
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

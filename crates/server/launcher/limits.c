/* batchgate-limits: sets resource limits on itself, then executes the program, so the
 * limits hold from the program's first instruction.
 * Usage: batchgate-limits RESOURCE=VALUE... -- PROGRAM [ARG]...
 * RESOURCE is core, cpu, as, fsize, nofile or nproc; soft and hard limits are both set to
 * VALUE. The program is found on PATH like execvp(3). Exits 127 if it cannot run it. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

static int resource_of(const char *name, size_t length) {
    static const struct { const char *name; int resource; } known[] = {
        {"core", RLIMIT_CORE}, {"cpu", RLIMIT_CPU}, {"as", RLIMIT_AS},
        {"fsize", RLIMIT_FSIZE}, {"nofile", RLIMIT_NOFILE}, {"nproc", RLIMIT_NPROC},
    };
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++) {
        if (strlen(known[i].name) == length && strncmp(known[i].name, name, length) == 0) {
            return known[i].resource;
        }
    }
    return -1;
}

int main(int argc, char **argv) {
    int i = 1;
    for (; i < argc && strcmp(argv[i], "--") != 0; i++) {
        const char *equals = strchr(argv[i], '=');
        char *end = NULL;
        int resource = equals ? resource_of(argv[i], (size_t)(equals - argv[i])) : -1;
        errno = 0;
        unsigned long long value = equals ? strtoull(equals + 1, &end, 10) : 0;
        if (resource < 0 || errno != 0 || end == equals + 1 || *end != '\0') {
            fprintf(stderr, "batchgate-limits: bad limit `%s`\n", argv[i]);
            return 127;
        }
        struct rlimit limit = { (rlim_t)value, (rlim_t)value };
        if (setrlimit(resource, &limit) != 0) {
            fprintf(stderr, "batchgate-limits: cannot set `%s`: %s\n", argv[i], strerror(errno));
            return 127;
        }
    }
    if (i + 1 >= argc) {
        fprintf(stderr, "usage: batchgate-limits RESOURCE=VALUE... -- PROGRAM [ARG]...\n");
        return 127;
    }
    execvp(argv[i + 1], &argv[i + 1]);
    fprintf(stderr, "batchgate-limits: cannot run %s: %s\n", argv[i + 1], strerror(errno));
    return 127;
}

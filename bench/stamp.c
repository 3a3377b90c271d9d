/* The benchmark's trivial legacy program: prints the wall-clock time of its first
 * instruction (nanoseconds since the epoch) to stdout, then copies its input file to its
 * output file. Usage: stamp INPUT OUTPUT */
#include <stdio.h>
#include <time.h>

int main(int argc, char **argv) {
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    printf("%lld%09ld\n", (long long)now.tv_sec, now.tv_nsec);
    if (argc != 3) {
        fprintf(stderr, "usage: stamp INPUT OUTPUT\n");
        return 2;
    }
    FILE *in = fopen(argv[1], "rb");
    if (!in) { perror(argv[1]); return 1; }
    FILE *out = fopen(argv[2], "wb");
    if (!out) { perror(argv[2]); return 1; }
    char buffer[65536];
    size_t n;
    while ((n = fread(buffer, 1, sizeof buffer, in)) > 0) {
        if (fwrite(buffer, 1, n, out) != n) { perror(argv[2]); return 1; }
    }
    if (ferror(in)) { perror(argv[1]); return 1; }
    if (fclose(out) != 0) { perror(argv[2]); return 1; }
    fclose(in);
    return 0;
}

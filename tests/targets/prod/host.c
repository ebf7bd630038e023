/* Loads PLUGIN with dlopen after DELAY_MS (so leaktrace is already tracing
 * when the library appears) and calls it ROUNDS times, every 20 ms:
 *   host PLUGIN DELAY_MS ROUNDS */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

typedef int (*handler)(int);

__attribute__((noinline, noclone)) static handler load_plugin(const char *path) {
    void *lib = dlopen(path, RTLD_NOW);
    if (!lib) { fprintf(stderr, "%s\n", dlerror()); exit(2); }
    return (handler)dlsym(lib, "plugin_handle");
}

__attribute__((noinline, noclone)) static int dispatch(handler h, int i) {
    int r = h(i);
    return r + 1;
}

int main(int argc, char **argv) {
    if (argc < 4) { fprintf(stderr, "usage: host PLUGIN DELAY_MS ROUNDS\n"); return 2; }
    usleep(atoi(argv[2]) * 1000);
    handler h = load_plugin(argv[1]);
    int rounds = atoi(argv[3]), sum = 0;
    for (int i = 0; i < rounds; i++) {
        sum += dispatch(h, i);
        usleep(20 * 1000);
    }
    printf("%d\n", sum);
    return 0;
}

/*
 * fake_nvml.c - a scripted stand-in for libnvidia-ml.so, so the real nvml-wrapper code path in
 * vramguard runs on machines without a GPU. Devices come from a scenario file named by the
 * FAKE_NVML_SCENARIO environment variable; the file is re-read whenever its inode, size or mtime
 * changes, so a test can change the "hardware" while vramguard runs. Format: README.md beside
 * this file. Only the functions vramguard calls are implemented; nvml-wrapper resolves the rest
 * lazily and never asks for them.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#ifdef __linux__
#include <libgen.h>
#include <poll.h>
#include <sys/inotify.h>
#include <unistd.h>
#endif
#include <time.h>

typedef int nvmlReturn_t;
typedef void *nvmlDevice_t;

enum {
    NVML_SUCCESS = 0,
    NVML_ERROR_UNINITIALIZED = 1,
    NVML_ERROR_INVALID_ARGUMENT = 2,
    NVML_ERROR_NOT_SUPPORTED = 3,
    NVML_ERROR_NO_PERMISSION = 4,
    NVML_ERROR_NOT_FOUND = 6,
    NVML_ERROR_INSUFFICIENT_SIZE = 7,
    NVML_ERROR_DRIVER_NOT_LOADED = 9,
    NVML_ERROR_TIMEOUT = 10,
    NVML_ERROR_LIBRARY_NOT_FOUND = 12,
    NVML_ERROR_GPU_IS_LOST = 15,
    NVML_ERROR_UNKNOWN = 999,
};

typedef struct {
    char busIdLegacy[16];
    unsigned int domain, bus, device, pciDeviceId, pciSubSystemId;
    char busId[32];
} nvmlPciInfo_t;

typedef struct {
    unsigned int version;
    unsigned long long total, reserved, free, used;
} nvmlMemory_v2_t;

typedef struct {
    unsigned int gpu, memory;
} nvmlUtilization_t;

typedef struct {
    unsigned int pid;
    unsigned long long usedGpuMemory;
    unsigned int gpuInstanceId, computeInstanceId;
} nvmlProcessInfo_t;

typedef struct {
    unsigned long long referenceTime, violationTime;
} nvmlViolationTime_t;

typedef struct {
    unsigned int pid;
    unsigned long long timeStamp;
    unsigned int smUtil, memUtil, encUtil, decUtil;
} nvmlProcessUtilizationSample_t;

typedef struct {
    nvmlDevice_t device;
    unsigned long long eventType;
    unsigned long long eventData;
    unsigned int gpuInstanceId, computeInstanceId;
} nvmlEventData_t;

#define MAX_GPUS 16
#define MAX_PROCS 256
#define MAX_XIDS 32
#define MAX_FANS 8
#define VIOLATION_POLICIES 6 /* power, thermal, sync_boost, board_limit, low_utilization, reliability */
#define PSTATE_UNKNOWN 32
#define NOT_SUPPORTED (-1LL)
#define EVENT_XID 0x8ULL /* nvmlEventTypeXidCriticalError */

/* An event set: the event types registered per device. */
typedef struct fake_set {
    unsigned long long mask[MAX_GPUS];
} *nvmlEventSet_t;

typedef struct {
    char uuid[96], name[96], pci_bus_id[32];
    long long memory_total, memory_used, memory_reserved;
    long long utilization_gpu, utilization_memory, temperature, power_mw;
    int lost;
    long long hang_ms;
    /* faults: NOT_SUPPORTED makes the call fail with NVML_ERROR_NOT_SUPPORTED */
    long long ecc_mode, ecc_corrected, ecc_uncorrected;
    long long remapped_correctable, remapped_uncorrectable, remap_pending, remap_failed;
    int remapped_rows_unsupported;
    long long clock_event_reasons, clock_sm, clock_memory;
    int xid_events_unsupported;
    /* telemetry (all NOT_SUPPORTED unless the scenario sets them) */
    long long power_limit_mw, energy_mj;
    int nfans; /* -1: nvmlDeviceGetNumFans fails NOT_SUPPORTED */
    long long fan_percent[MAX_FANS];
    long long encoder_utilization, decoder_utilization;
    long long pcie_tx_kbps, pcie_rx_kbps, pcie_link_gen, pcie_link_width;
    long long pcie_window_ms;
    /* topology: GPUs under the same PCIe switch, on the same NUMA node */
    char pcie_switch[32];
    long long numa_node;
    long long pstate;
    long long violation_ns[VIOLATION_POLICIES];
    int process_utilization_unsupported;
    int process_sm_race;
    int nprocs, nxids, nsm;
    /* The lists last: most calls copy only what comes before them (DEVICE_HEAD), so a call
       costs about what a real driver's bookkeeping would, not a copy of every list. */
    unsigned int proc_pid[MAX_PROCS];
    long long proc_mem[MAX_PROCS];
    unsigned long long xid_code[MAX_XIDS];
    long long xid_seq[MAX_XIDS];
    unsigned int sm_pid[MAX_PROCS];
    long long sm_percent[MAX_PROCS];
} fake_gpu;

#define DEVICE_HEAD offsetof(fake_gpu, proc_pid)

typedef struct {
    char driver_version[80];
    int init_error;
    long long init_hang_ms;
    long long event_wait_hang_ms;
    int ngpus;
    fake_gpu gpus[MAX_GPUS];
} scenario;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static scenario cur;
static int init_count;
static struct stat last_stat;
static int loaded;
/* The highest XID sequence delivered per GPU index, for the whole process: each scripted event
   is delivered once, to whichever event set waits first, however often the file is re-read. */
static long long xid_delivered[MAX_GPUS];
/* Filled nvmlDeviceGetProcessUtilization calls so far, per GPU index (see `process_sm_race`). */
static long long sm_filled_calls[MAX_GPUS];

static int parse_error(const char *name) {
    if (!strcmp(name, "DRIVER_NOT_LOADED")) return NVML_ERROR_DRIVER_NOT_LOADED;
    if (!strcmp(name, "NO_PERMISSION")) return NVML_ERROR_NO_PERMISSION;
    if (!strcmp(name, "LIBRARY_NOT_FOUND")) return NVML_ERROR_LIBRARY_NOT_FOUND;
    if (!strcmp(name, "TIMEOUT")) return NVML_ERROR_TIMEOUT;
    if (!strcmp(name, "NONE") || !strcmp(name, "")) return NVML_SUCCESS;
    return NVML_ERROR_UNKNOWN;
}

static long long parse_value(const char *v) {
    if (!strcmp(v, "unsupported")) return NOT_SUPPORTED;
    return strtoll(v, NULL, 10);
}

/* Clock event reasons: a number (0x48 or 72), "none", "unsupported", or names joined by commas. */
static long long parse_reasons(const char *v) {
    static const struct { const char *name; long long bit; } names[] = {
        {"gpu_idle", 0x1}, {"applications_clocks_setting", 0x2}, {"sw_power_cap", 0x4},
        {"hw_slowdown", 0x8}, {"sync_boost", 0x10}, {"sw_thermal_slowdown", 0x20},
        {"hw_thermal_slowdown", 0x40}, {"hw_power_brake_slowdown", 0x80},
        {"display_clock_setting", 0x100},
    };
    if (!strcmp(v, "unsupported")) return NOT_SUPPORTED;
    if (!strcmp(v, "none")) return 0;
    if (*v >= '0' && *v <= '9') return (long long)strtoull(v, NULL, 0);
    long long bits = 0;
    char copy[400];
    snprintf(copy, sizeof copy, "%s", v);
    for (char *tok = strtok(copy, ","); tok; tok = strtok(NULL, ","))
        for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
            if (!strcmp(tok, names[i].name)) bits |= names[i].bit;
    return bits;
}

static long long parse_ecc_mode(const char *v) {
    if (!strcmp(v, "unsupported")) return NOT_SUPPORTED;
    return !strcmp(v, "on") || !strcmp(v, "1");
}

static void default_gpu(fake_gpu *g, int index) {
    memset(g, 0, sizeof(*g));
    snprintf(g->uuid, sizeof g->uuid, "GPU-00000000-0000-0000-0000-%012d", index);
    snprintf(g->name, sizeof g->name, "Fake GPU");
    snprintf(g->pci_bus_id, sizeof g->pci_bus_id, "00000000:%02X:00.0", index + 1);
    g->memory_total = 16LL << 30;
    g->ecc_mode = 1;
    /* The telemetry readings default to unsupported, so a scenario that does not name them is a
       board without them (and the scenarios written before they existed read as before). */
    g->power_limit_mw = g->energy_mj = NOT_SUPPORTED;
    g->nfans = -1;
    g->encoder_utilization = g->decoder_utilization = NOT_SUPPORTED;
    g->pcie_tx_kbps = g->pcie_rx_kbps = g->pcie_link_gen = g->pcie_link_width = NOT_SUPPORTED;
    g->pstate = NOT_SUPPORTED;
    g->numa_node = NOT_SUPPORTED;
    for (int i = 0; i < VIOLATION_POLICIES; i++) g->violation_ns[i] = NOT_SUPPORTED;
    g->process_utilization_unsupported = 1;
}

/* "45,50": one percent per fan; "unsupported"; "none" (a board without fans: 0 fans). */
static void parse_fans(fake_gpu *g, const char *v) {
    if (!strcmp(v, "unsupported")) { g->nfans = -1; return; }
    g->nfans = 0;
    if (!strcmp(v, "none")) return;
    char copy[400];
    snprintf(copy, sizeof copy, "%s", v);
    for (char *tok = strtok(copy, ","); tok && g->nfans < MAX_FANS; tok = strtok(NULL, ","))
        g->fan_percent[g->nfans++] = parse_value(tok);
}

static const char *violation_keys[VIOLATION_POLICIES] = {
    "violation_power_ns", "violation_thermal_ns", "violation_sync_boost_ns",
    "violation_board_limit_ns", "violation_low_utilization_ns", "violation_reliability_ns",
};

/* Re-reads the scenario when the file changed. Called with the lock held. The file is looked at
   at most every 20 ms: one sample makes a hundred calls or more, and the real NVML reads no
   file, so a sample under the fake should not cost a hundred stat()s either. A test that
   rewrites the scenario waits for the next sample, which is always later than that. */
static int scenario_changed; /* set by the XID wait when the directory changed; under the lock */

/* The scenario file: FAKE_NVML_SCENARIO, else `scenario.txt` beside this library (how
   `vramguard --demo` points its embedded copy at the scenario it writes, without touching the
   environment of a running process). NULL when neither applies. */
static char beside_path[4096];
static pthread_once_t beside_once = PTHREAD_ONCE_INIT;

static void find_beside(void) {
    Dl_info info;
    if (!dladdr((void *)find_beside, &info) || !info.dli_fname || !strchr(info.dli_fname, '/')) return;
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", info.dli_fname);
    snprintf(beside_path, sizeof beside_path, "%s/scenario.txt", dirname(dir));
}

static const char *scenario_path(void) {
    const char *env = getenv("FAKE_NVML_SCENARIO");
    if (env) return env;
    pthread_once(&beside_once, find_beside);
    return beside_path[0] ? beside_path : NULL;
}

static void refresh(void) {
    static struct timespec last_look;
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &now);
    long long since = (now.tv_sec - last_look.tv_sec) * 1000LL + (now.tv_nsec - last_look.tv_nsec) / 1000000LL;
    if (loaded && !scenario_changed && since >= 0 && since < 20) return;
    last_look = now;
    scenario_changed = 0;
    const char *path = scenario_path();
    struct stat st;
    if (!path || stat(path, &st) != 0) {
        if (!loaded) {
            memset(&cur, 0, sizeof cur);
            cur.init_error = NVML_ERROR_DRIVER_NOT_LOADED;
            loaded = 1;
        }
        return;
    }
    if (loaded && st.st_ino == last_stat.st_ino && st.st_size == last_stat.st_size &&
        st.st_mtim.tv_sec == last_stat.st_mtim.tv_sec &&
        st.st_mtim.tv_nsec == last_stat.st_mtim.tv_nsec)
        return;
    FILE *f = fopen(path, "r");
    if (!f) return;
    scenario next;
    memset(&next, 0, sizeof next);
    snprintf(next.driver_version, sizeof next.driver_version, "550.54.15");
    fake_gpu *g = NULL;
    char line[512];
    while (fgets(line, sizeof line, f)) {
        char key[64] = "", val[400] = "", extra[64] = "";
        char *hash = strchr(line, '#');
        if (hash) *hash = 0;
        int n = sscanf(line, "%63s %399s %63s", key, val, extra);
        if (n < 1) continue;
        if (!strcmp(key, "[gpu]")) {
            if (next.ngpus >= MAX_GPUS) break;
            g = &next.gpus[next.ngpus];
            default_gpu(g, next.ngpus);
            next.ngpus++;
            continue;
        }
        if (n < 2) continue;
        if (!g) {
            if (!strcmp(key, "driver_version")) snprintf(next.driver_version, sizeof next.driver_version, "%s", val);
            else if (!strcmp(key, "init_error")) next.init_error = parse_error(val);
            else if (!strcmp(key, "init_hang_ms")) next.init_hang_ms = parse_value(val);
            else if (!strcmp(key, "event_wait_hang_ms")) next.event_wait_hang_ms = parse_value(val);
            continue;
        }
        if (!strcmp(key, "uuid")) snprintf(g->uuid, sizeof g->uuid, "%s", val);
        else if (!strcmp(key, "name")) {
            /* names have spaces: take the rest of the line after the key */
            const char *rest = strstr(line, "name") + 4;
            while (*rest == ' ' || *rest == '\t') rest++;
            snprintf(g->name, sizeof g->name, "%s", rest);
            g->name[strcspn(g->name, "\r\n")] = 0;
            size_t len = strlen(g->name);
            while (len && (g->name[len - 1] == ' ' || g->name[len - 1] == '\t')) g->name[--len] = 0;
        }
        else if (!strcmp(key, "pci_bus_id")) snprintf(g->pci_bus_id, sizeof g->pci_bus_id, "%s", val);
        else if (!strcmp(key, "memory_total")) g->memory_total = parse_value(val);
        else if (!strcmp(key, "memory_used")) g->memory_used = parse_value(val);
        else if (!strcmp(key, "memory_reserved")) g->memory_reserved = parse_value(val);
        else if (!strcmp(key, "utilization_gpu")) g->utilization_gpu = parse_value(val);
        else if (!strcmp(key, "utilization_memory")) g->utilization_memory = parse_value(val);
        else if (!strcmp(key, "temperature")) g->temperature = parse_value(val);
        else if (!strcmp(key, "power_mw")) g->power_mw = parse_value(val);
        else if (!strcmp(key, "lost")) g->lost = atoi(val);
        else if (!strcmp(key, "hang_ms")) g->hang_ms = parse_value(val);
        else if (!strcmp(key, "ecc_mode")) g->ecc_mode = parse_ecc_mode(val);
        else if (!strcmp(key, "ecc_corrected")) g->ecc_corrected = parse_value(val);
        else if (!strcmp(key, "ecc_uncorrected")) g->ecc_uncorrected = parse_value(val);
        else if (!strcmp(key, "remapped_rows")) g->remapped_rows_unsupported = !strcmp(val, "unsupported");
        else if (!strcmp(key, "remapped_rows_correctable")) g->remapped_correctable = parse_value(val);
        else if (!strcmp(key, "remapped_rows_uncorrectable")) g->remapped_uncorrectable = parse_value(val);
        else if (!strcmp(key, "remap_pending")) g->remap_pending = parse_value(val);
        else if (!strcmp(key, "remap_failed")) g->remap_failed = parse_value(val);
        else if (!strcmp(key, "clock_event_reasons")) g->clock_event_reasons = parse_reasons(val);
        else if (!strcmp(key, "clock_sm")) g->clock_sm = parse_value(val);
        else if (!strcmp(key, "clock_memory")) g->clock_memory = parse_value(val);
        else if (!strcmp(key, "xid_events")) g->xid_events_unsupported = !strcmp(val, "unsupported");
        else if (!strcmp(key, "xid") && g->nxids < MAX_XIDS) {
            g->xid_code[g->nxids] = strtoull(val, NULL, 10);
            /* without a sequence number, the line's place among this GPU's xid lines */
            g->xid_seq[g->nxids] = n == 3 ? strtoll(extra, NULL, 10) : g->nxids + 1;
            g->nxids++;
        }
        else if (!strcmp(key, "power_limit_mw")) g->power_limit_mw = parse_value(val);
        else if (!strcmp(key, "energy_mj")) g->energy_mj = parse_value(val);
        else if (!strcmp(key, "fans")) parse_fans(g, val);
        else if (!strcmp(key, "encoder_utilization")) g->encoder_utilization = parse_value(val);
        else if (!strcmp(key, "decoder_utilization")) g->decoder_utilization = parse_value(val);
        else if (!strcmp(key, "pcie_tx_kbps")) g->pcie_tx_kbps = parse_value(val);
        else if (!strcmp(key, "pcie_rx_kbps")) g->pcie_rx_kbps = parse_value(val);
        else if (!strcmp(key, "pcie_link_gen")) g->pcie_link_gen = parse_value(val);
        else if (!strcmp(key, "pcie_link_width")) g->pcie_link_width = parse_value(val);
        else if (!strcmp(key, "pcie_window_ms")) g->pcie_window_ms = parse_value(val);
        else if (!strcmp(key, "pcie_switch")) snprintf(g->pcie_switch, sizeof g->pcie_switch, "%s", val);
        else if (!strcmp(key, "numa_node")) g->numa_node = parse_value(val);
        else if (!strcmp(key, "process_sm_race")) g->process_sm_race = atoi(val) != 0;
        else if (!strcmp(key, "pstate")) g->pstate = !strcmp(val, "unknown") ? PSTATE_UNKNOWN : parse_value(val);
        else if (!strncmp(key, "violation_", 10)) {
            for (int i = 0; i < VIOLATION_POLICIES; i++)
                if (!strcmp(key, violation_keys[i])) g->violation_ns[i] = parse_value(val);
        }
        else if (!strcmp(key, "process_utilization")) g->process_utilization_unsupported = !strcmp(val, "unsupported");
        else if (!strcmp(key, "process_sm") && n == 3 && g->nsm < MAX_PROCS) {
            g->process_utilization_unsupported = 0;
            g->sm_pid[g->nsm] = (unsigned int)strtoul(val, NULL, 10);
            g->sm_percent[g->nsm] = parse_value(extra);
            g->nsm++;
        }
        else if (!strcmp(key, "process") && n == 3 && g->nprocs < MAX_PROCS) {
            g->proc_pid[g->nprocs] = (unsigned int)strtoul(val, NULL, 10);
            g->proc_mem[g->nprocs] = parse_value(extra);
            g->nprocs++;
        }
    }
    fclose(f);
    cur = next;
    last_stat = st;
    loaded = 1;
}

static void sleep_ms(long long ms) {
    if (ms <= 0) return;
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* What of a device's lists a call needs copied besides its head. */
enum { LISTS_NONE, LISTS_PROCS, LISTS_SM };

/* Looks up a device handle; copies the device (and the one list the call reads) so the lock can
   be dropped before any hang. */
static nvmlReturn_t device_copy(nvmlDevice_t handle, fake_gpu *out, int lists) {
    pthread_mutex_lock(&lock);
    refresh();
    nvmlReturn_t rc = NVML_SUCCESS;
    uintptr_t idx = (uintptr_t)handle;
    if (init_count == 0) rc = NVML_ERROR_UNINITIALIZED;
    else if (idx == 0 || idx > (uintptr_t)cur.ngpus) rc = NVML_ERROR_INVALID_ARGUMENT;
    else {
        const fake_gpu *g = &cur.gpus[idx - 1];
        memcpy(out, g, DEVICE_HEAD);
        if (lists == LISTS_PROCS) {
            memcpy(out->proc_pid, g->proc_pid, sizeof g->proc_pid[0] * (size_t)g->nprocs);
            memcpy(out->proc_mem, g->proc_mem, sizeof g->proc_mem[0] * (size_t)g->nprocs);
        } else if (lists == LISTS_SM) {
            memcpy(out->sm_pid, g->sm_pid, sizeof g->sm_pid[0] * (size_t)g->nsm);
            memcpy(out->sm_percent, g->sm_percent, sizeof g->sm_percent[0] * (size_t)g->nsm);
        }
        if (out->lost) rc = NVML_ERROR_GPU_IS_LOST;
    }
    pthread_mutex_unlock(&lock);
    if (rc == NVML_SUCCESS) sleep_ms(out->hang_ms);
    return rc;
}

static nvmlReturn_t device(nvmlDevice_t handle, fake_gpu *out) {
    return device_copy(handle, out, LISTS_NONE);
}

static nvmlReturn_t copy_string(char *dst, unsigned int len, const char *src) {
    if (!dst) return NVML_ERROR_INVALID_ARGUMENT;
    if (strlen(src) + 1 > len) return NVML_ERROR_INSUFFICIENT_SIZE;
    memcpy(dst, src, strlen(src) + 1);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlInit_v2(void) {
    pthread_mutex_lock(&lock);
    refresh();
    long long hang = cur.init_hang_ms;
    nvmlReturn_t rc = cur.init_error;
    pthread_mutex_unlock(&lock);
    sleep_ms(hang);
    if (rc != NVML_SUCCESS) return rc;
    pthread_mutex_lock(&lock);
    init_count++;
    pthread_mutex_unlock(&lock);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlInitWithFlags(unsigned int flags) {
    (void)flags;
    return nvmlInit_v2();
}

nvmlReturn_t nvmlShutdown(void) {
    pthread_mutex_lock(&lock);
    nvmlReturn_t rc = init_count > 0 ? NVML_SUCCESS : NVML_ERROR_UNINITIALIZED;
    if (init_count > 0) init_count--;
    pthread_mutex_unlock(&lock);
    return rc;
}

const char *nvmlErrorString(nvmlReturn_t result) {
    switch (result) {
    case NVML_SUCCESS: return "Success";
    case NVML_ERROR_UNINITIALIZED: return "Uninitialized";
    case NVML_ERROR_INVALID_ARGUMENT: return "Invalid Argument";
    case NVML_ERROR_NOT_SUPPORTED: return "Not Supported";
    case NVML_ERROR_DRIVER_NOT_LOADED: return "Driver Not Loaded";
    case NVML_ERROR_TIMEOUT: return "Timeout";
    case NVML_ERROR_GPU_IS_LOST: return "GPU is lost";
    default: return "Unknown Error";
    }
}

nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length) {
    pthread_mutex_lock(&lock);
    refresh();
    nvmlReturn_t rc = init_count == 0 ? NVML_ERROR_UNINITIALIZED : copy_string(version, length, cur.driver_version);
    pthread_mutex_unlock(&lock);
    return rc;
}

nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *count) {
    if (!count) return NVML_ERROR_INVALID_ARGUMENT;
    pthread_mutex_lock(&lock);
    refresh();
    nvmlReturn_t rc = init_count == 0 ? NVML_ERROR_UNINITIALIZED : NVML_SUCCESS;
    if (rc == NVML_SUCCESS) *count = (unsigned int)cur.ngpus;
    pthread_mutex_unlock(&lock);
    return rc;
}

nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *out) {
    if (!out) return NVML_ERROR_INVALID_ARGUMENT;
    pthread_mutex_lock(&lock);
    refresh();
    nvmlReturn_t rc = NVML_SUCCESS;
    if (init_count == 0) rc = NVML_ERROR_UNINITIALIZED;
    else if (index >= (unsigned int)cur.ngpus) rc = NVML_ERROR_INVALID_ARGUMENT;
    else if (cur.gpus[index].lost) rc = NVML_ERROR_GPU_IS_LOST;
    else *out = (nvmlDevice_t)(uintptr_t)(index + 1);
    pthread_mutex_unlock(&lock);
    return rc;
}

nvmlReturn_t nvmlDeviceGetIndex(nvmlDevice_t d, unsigned int *index) {
    fake_gpu g;
    nvmlReturn_t rc = device(d, &g);
    if (rc == NVML_SUCCESS) *index = (unsigned int)((uintptr_t)d - 1);
    return rc;
}

nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t d, char *uuid, unsigned int length) {
    fake_gpu g;
    nvmlReturn_t rc = device(d, &g);
    return rc == NVML_SUCCESS ? copy_string(uuid, length, g.uuid) : rc;
}

nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t d, char *name, unsigned int length) {
    fake_gpu g;
    nvmlReturn_t rc = device(d, &g);
    return rc == NVML_SUCCESS ? copy_string(name, length, g.name) : rc;
}

nvmlReturn_t nvmlDeviceGetPciInfo_v3(nvmlDevice_t d, nvmlPciInfo_t *pci) {
    fake_gpu g;
    nvmlReturn_t rc = device(d, &g);
    if (rc != NVML_SUCCESS) return rc;
    memset(pci, 0, sizeof *pci);
    snprintf(pci->busId, sizeof pci->busId, "%s", g.pci_bus_id);
    snprintf(pci->busIdLegacy, sizeof pci->busIdLegacy, "%.15s", g.pci_bus_id);
    pci->pciDeviceId = 0x270410de;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t d, nvmlMemory_v2_t *mem) {
    fake_gpu g;
    nvmlReturn_t rc = device(d, &g);
    if (rc != NVML_SUCCESS) return rc;
    if (g.memory_total == NOT_SUPPORTED) return NVML_ERROR_NOT_SUPPORTED;
    mem->total = (unsigned long long)g.memory_total;
    mem->reserved = (unsigned long long)g.memory_reserved;
    mem->used = (unsigned long long)g.memory_used;
    long long free = g.memory_total - g.memory_reserved - g.memory_used;
    mem->free = free > 0 ? (unsigned long long)free : 0;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t d, nvmlUtilization_t *u) {
    fake_gpu g;
    nvmlReturn_t rc = device(d, &g);
    if (rc != NVML_SUCCESS) return rc;
    if (g.utilization_gpu == NOT_SUPPORTED) return NVML_ERROR_NOT_SUPPORTED;
    u->gpu = (unsigned int)g.utilization_gpu;
    u->memory = (unsigned int)(g.utilization_memory == NOT_SUPPORTED ? 0 : g.utilization_memory);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetTemperature(nvmlDevice_t d, int sensor, unsigned int *temp) {
    fake_gpu g;
    nvmlReturn_t rc = device(d, &g);
    if (rc != NVML_SUCCESS) return rc;
    if (sensor != 0) return NVML_ERROR_INVALID_ARGUMENT;
    if (g.temperature == NOT_SUPPORTED) return NVML_ERROR_NOT_SUPPORTED;
    *temp = (unsigned int)g.temperature;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetPowerUsage(nvmlDevice_t d, unsigned int *power) {
    fake_gpu g;
    nvmlReturn_t rc = device(d, &g);
    if (rc != NVML_SUCCESS) return rc;
    if (g.power_mw == NOT_SUPPORTED) return NVML_ERROR_NOT_SUPPORTED;
    *power = (unsigned int)g.power_mw;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t d, unsigned int *count,
                                                     nvmlProcessInfo_t *infos) {
    fake_gpu g;
    nvmlReturn_t rc = device_copy(d, &g, LISTS_PROCS);
    if (rc != NVML_SUCCESS) return rc;
    if (!count) return NVML_ERROR_INVALID_ARGUMENT;
    unsigned int want = (unsigned int)g.nprocs;
    if (*count < want || !infos) {
        *count = want;
        return want == 0 ? NVML_SUCCESS : NVML_ERROR_INSUFFICIENT_SIZE;
    }
    for (unsigned int i = 0; i < want; i++) {
        infos[i].pid = g.proc_pid[i];
        /* NVML_VALUE_NOT_AVAILABLE: what NVML reports when it cannot see a process's memory */
        infos[i].usedGpuMemory = g.proc_mem[i] == NOT_SUPPORTED ? 0xFFFFFFFFFFFFFFFFULL
                                                               : (unsigned long long)g.proc_mem[i];
        infos[i].gpuInstanceId = 0xFFFFFFFF;
        infos[i].computeInstanceId = 0xFFFFFFFF;
    }
    *count = want;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetEccMode(nvmlDevice_t d, int *current, int *pending) {
    fake_gpu g;
    nvmlReturn_t rc = device(d, &g);
    if (rc != NVML_SUCCESS) return rc;
    if (!current || !pending) return NVML_ERROR_INVALID_ARGUMENT;
    if (g.ecc_mode == NOT_SUPPORTED) return NVML_ERROR_NOT_SUPPORTED;
    *current = *pending = g.ecc_mode ? 1 : 0;
    return NVML_SUCCESS;
}

/* errorType 0 corrected, 1 uncorrected; the aggregate counter (1) reports the volatile one. */
nvmlReturn_t nvmlDeviceGetTotalEccErrors(nvmlDevice_t d, int errorType, int counterType,
                                         unsigned long long *count) {
    fake_gpu g;
    nvmlReturn_t rc = device(d, &g);
    if (rc != NVML_SUCCESS) return rc;
    if (!count || errorType < 0 || errorType > 1 || counterType < 0 || counterType > 1)
        return NVML_ERROR_INVALID_ARGUMENT;
    long long v = errorType == 0 ? g.ecc_corrected : g.ecc_uncorrected;
    if (g.ecc_mode == NOT_SUPPORTED || v == NOT_SUPPORTED) return NVML_ERROR_NOT_SUPPORTED;
    *count = (unsigned long long)v;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetRemappedRows(nvmlDevice_t d, unsigned int *corrRows, unsigned int *uncRows,
                                       unsigned int *isPending, unsigned int *failureOccurred) {
    fake_gpu g;
    nvmlReturn_t rc = device(d, &g);
    if (rc != NVML_SUCCESS) return rc;
    if (!corrRows || !uncRows || !isPending || !failureOccurred) return NVML_ERROR_INVALID_ARGUMENT;
    if (g.remapped_rows_unsupported || g.remapped_correctable == NOT_SUPPORTED ||
        g.remapped_uncorrectable == NOT_SUPPORTED || g.remap_pending == NOT_SUPPORTED ||
        g.remap_failed == NOT_SUPPORTED)
        return NVML_ERROR_NOT_SUPPORTED;
    *corrRows = (unsigned int)g.remapped_correctable;
    *uncRows = (unsigned int)g.remapped_uncorrectable;
    *isPending = g.remap_pending ? 1 : 0;
    *failureOccurred = g.remap_failed ? 1 : 0;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetCurrentClocksThrottleReasons(nvmlDevice_t d, unsigned long long *reasons) {
    fake_gpu g;
    nvmlReturn_t rc = device(d, &g);
    if (rc != NVML_SUCCESS) return rc;
    if (!reasons) return NVML_ERROR_INVALID_ARGUMENT;
    if (g.clock_event_reasons == NOT_SUPPORTED) return NVML_ERROR_NOT_SUPPORTED;
    *reasons = (unsigned long long)g.clock_event_reasons;
    return NVML_SUCCESS;
}

/* type 0 graphics (reports the SM clock), 1 SM, 2 memory; video is not supported. */
nvmlReturn_t nvmlDeviceGetClockInfo(nvmlDevice_t d, int type, unsigned int *clock) {
    fake_gpu g;
    nvmlReturn_t rc = device(d, &g);
    if (rc != NVML_SUCCESS) return rc;
    if (!clock) return NVML_ERROR_INVALID_ARGUMENT;
    long long v = type == 0 || type == 1 ? g.clock_sm : type == 2 ? g.clock_memory : NOT_SUPPORTED;
    if (v == NOT_SUPPORTED) return NVML_ERROR_NOT_SUPPORTED;
    *clock = (unsigned int)v;
    return NVML_SUCCESS;
}

/* One unsigned-int reading that the scenario may mark unsupported. */
static nvmlReturn_t uint_reading(nvmlDevice_t d, size_t offset, unsigned int *out) {
    fake_gpu g;
    nvmlReturn_t rc = device(d, &g);
    if (rc != NVML_SUCCESS) return rc;
    if (!out) return NVML_ERROR_INVALID_ARGUMENT;
    long long v = *(long long *)((char *)&g + offset);
    if (v == NOT_SUPPORTED) return NVML_ERROR_NOT_SUPPORTED;
    *out = (unsigned int)v;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetEnforcedPowerLimit(nvmlDevice_t d, unsigned int *limit) {
    return uint_reading(d, offsetof(fake_gpu, power_limit_mw), limit);
}

/* Millijoules since the driver loaded. */
nvmlReturn_t nvmlDeviceGetTotalEnergyConsumption(nvmlDevice_t d, unsigned long long *energy) {
    fake_gpu g;
    nvmlReturn_t rc = device(d, &g);
    if (rc != NVML_SUCCESS) return rc;
    if (!energy) return NVML_ERROR_INVALID_ARGUMENT;
    if (g.energy_mj == NOT_SUPPORTED) return NVML_ERROR_NOT_SUPPORTED;
    *energy = (unsigned long long)g.energy_mj;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetNumFans(nvmlDevice_t d, unsigned int *count) {
    fake_gpu g;
    nvmlReturn_t rc = device(d, &g);
    if (rc != NVML_SUCCESS) return rc;
    if (!count) return NVML_ERROR_INVALID_ARGUMENT;
    if (g.nfans < 0) return NVML_ERROR_NOT_SUPPORTED;
    *count = (unsigned int)g.nfans;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetFanSpeed_v2(nvmlDevice_t d, unsigned int fan, unsigned int *speed) {
    fake_gpu g;
    nvmlReturn_t rc = device(d, &g);
    if (rc != NVML_SUCCESS) return rc;
    if (!speed) return NVML_ERROR_INVALID_ARGUMENT;
    if (g.nfans < 0) return NVML_ERROR_NOT_SUPPORTED;
    if (fan >= (unsigned int)g.nfans) return NVML_ERROR_INVALID_ARGUMENT;
    if (g.fan_percent[fan] == NOT_SUPPORTED) return NVML_ERROR_NOT_SUPPORTED;
    *speed = (unsigned int)g.fan_percent[fan];
    return NVML_SUCCESS;
}

/* Percent over the driver's sampling period, which is reported as 167 ms as on a real board. */
static nvmlReturn_t codec_utilization(nvmlDevice_t d, int decoder, unsigned int *util, unsigned int *period) {
    size_t offset = decoder ? offsetof(fake_gpu, decoder_utilization) : offsetof(fake_gpu, encoder_utilization);
    if (!period) return NVML_ERROR_INVALID_ARGUMENT;
    nvmlReturn_t rc = uint_reading(d, offset, util);
    if (rc == NVML_SUCCESS) *period = 167000;
    return rc;
}

nvmlReturn_t nvmlDeviceGetEncoderUtilization(nvmlDevice_t d, unsigned int *util, unsigned int *period) {
    return codec_utilization(d, 0, util, period);
}

nvmlReturn_t nvmlDeviceGetDecoderUtilization(nvmlDevice_t d, unsigned int *util, unsigned int *period) {
    return codec_utilization(d, 1, util, period);
}

/* counter 0 TX, 1 RX; KB/s as NVML reports them. A real driver samples the link for 20 ms per
   call before answering: `pcie_window_ms` makes the call wait that long. */
nvmlReturn_t nvmlDeviceGetPcieThroughput(nvmlDevice_t d, int counter, unsigned int *value) {
    if (counter != 0 && counter != 1) return NVML_ERROR_INVALID_ARGUMENT;
    nvmlReturn_t rc =
        uint_reading(d, counter == 0 ? offsetof(fake_gpu, pcie_tx_kbps) : offsetof(fake_gpu, pcie_rx_kbps), value);
    if (rc == NVML_SUCCESS) {
        fake_gpu g;
        if (device(d, &g) == NVML_SUCCESS) sleep_ms(g.pcie_window_ms);
    }
    return rc;
}

nvmlReturn_t nvmlDeviceGetCurrPcieLinkGeneration(nvmlDevice_t d, unsigned int *gen) {
    return uint_reading(d, offsetof(fake_gpu, pcie_link_gen), gen);
}

nvmlReturn_t nvmlDeviceGetCurrPcieLinkWidth(nvmlDevice_t d, unsigned int *width) {
    return uint_reading(d, offsetof(fake_gpu, pcie_link_width), width);
}

/* nvmlGpuTopologyLevel_t: 0 same board, 10 one PCIe switch, 40 one NUMA node, 50 across
   sockets. Two GPUs with the same `pcie_switch` are 10 apart; otherwise their `numa_node`s
   decide; a pair without them is not supported. */
nvmlReturn_t nvmlDeviceGetTopologyCommonAncestor(nvmlDevice_t d1, nvmlDevice_t d2, int *level) {
    fake_gpu a, b;
    nvmlReturn_t rc = device(d1, &a);
    if (rc != NVML_SUCCESS) return rc;
    rc = device(d2, &b);
    if (rc != NVML_SUCCESS) return rc;
    if (!level) return NVML_ERROR_INVALID_ARGUMENT;
    if (d1 == d2) *level = 0;
    else if (a.pcie_switch[0] && !strcmp(a.pcie_switch, b.pcie_switch)) *level = 10;
    else if (a.numa_node != NOT_SUPPORTED && b.numa_node != NOT_SUPPORTED) *level = a.numa_node == b.numa_node ? 40 : 50;
    else return NVML_ERROR_NOT_SUPPORTED;
    return NVML_SUCCESS;
}

/* nvmlPstates_t is an int enum: 0-15, 32 unknown. */
nvmlReturn_t nvmlDeviceGetPerformanceState(nvmlDevice_t d, int *state) {
    return uint_reading(d, offsetof(fake_gpu, pstate), (unsigned int *)state);
}

/* policy 0 power, 1 thermal, 2 sync boost, 3 board limit, 4 low utilization, 5 reliability;
   the total-clocks policies (6, 7) are not scripted. Nanoseconds since the driver loaded. */
nvmlReturn_t nvmlDeviceGetViolationStatus(nvmlDevice_t d, int policy, nvmlViolationTime_t *t) {
    fake_gpu g;
    nvmlReturn_t rc = device(d, &g);
    if (rc != NVML_SUCCESS) return rc;
    if (!t || policy < 0) return NVML_ERROR_INVALID_ARGUMENT;
    if (policy >= VIOLATION_POLICIES || g.violation_ns[policy] == NOT_SUPPORTED) return NVML_ERROR_NOT_SUPPORTED;
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    t->referenceTime = (unsigned long long)now.tv_sec * 1000000ULL + (unsigned long long)now.tv_nsec / 1000ULL;
    t->violationTime = (unsigned long long)g.violation_ns[policy];
    return NVML_SUCCESS;
}

/* One sample per scripted `process_sm` line, stamped now (so always newer than the caller's
   last seen timestamp). As the real call: NULL buffer -> INSUFFICIENT_SIZE with the count, no
   samples -> NOT_FOUND. */
nvmlReturn_t nvmlDeviceGetProcessUtilization(nvmlDevice_t d, nvmlProcessUtilizationSample_t *samples,
                                             unsigned int *count, unsigned long long lastSeen) {
    (void)lastSeen;
    fake_gpu g;
    nvmlReturn_t rc = device_copy(d, &g, LISTS_SM);
    if (rc != NVML_SUCCESS) return rc;
    if (!count) return NVML_ERROR_INVALID_ARGUMENT;
    if (g.process_utilization_unsupported) return NVML_ERROR_NOT_SUPPORTED;
    unsigned int want = (unsigned int)g.nsm;
    if (want == 0) return NVML_ERROR_NOT_FOUND;
    if (!samples || *count < want) {
        *count = want;
        return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    /* `process_sm_race 1`: every other filled call (the 1st, 3rd, ...) finds one more sample than
       the caller sized its buffer for, as when a process turns busy between the count and the
       read: a caller that asks again once gets its samples on every pass. */
    uintptr_t idx = (uintptr_t)d - 1;
    pthread_mutex_lock(&lock);
    int race = g.process_sm_race && idx < MAX_GPUS && sm_filled_calls[idx]++ % 2 == 0;
    pthread_mutex_unlock(&lock);
    if (race) {
        *count = want + 1;
        return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    unsigned long long stamp = (unsigned long long)now.tv_sec * 1000000ULL + (unsigned long long)now.tv_nsec / 1000ULL;
    for (unsigned int i = 0; i < want; i++) {
        memset(&samples[i], 0, sizeof samples[i]);
        samples[i].pid = g.sm_pid[i];
        samples[i].timeStamp = stamp;
        samples[i].smUtil = g.sm_percent[i] == NOT_SUPPORTED ? 0 : (unsigned int)g.sm_percent[i];
    }
    *count = want;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlEventSetCreate(nvmlEventSet_t *set) {
    if (!set) return NVML_ERROR_INVALID_ARGUMENT;
    pthread_mutex_lock(&lock);
    int initialised = init_count > 0;
    pthread_mutex_unlock(&lock);
    if (!initialised) return NVML_ERROR_UNINITIALIZED;
    *set = calloc(1, sizeof(struct fake_set));
    return *set ? NVML_SUCCESS : NVML_ERROR_UNKNOWN;
}

nvmlReturn_t nvmlEventSetFree(nvmlEventSet_t set) {
    free(set);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetSupportedEventTypes(nvmlDevice_t d, unsigned long long *types) {
    fake_gpu g;
    nvmlReturn_t rc = device(d, &g);
    if (rc != NVML_SUCCESS) return rc;
    if (!types) return NVML_ERROR_INVALID_ARGUMENT;
    *types = g.xid_events_unsupported ? 0 : EVENT_XID;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceRegisterEvents(nvmlDevice_t d, unsigned long long types, nvmlEventSet_t set) {
    fake_gpu g;
    nvmlReturn_t rc = device(d, &g);
    if (rc != NVML_SUCCESS) return rc;
    if (!set) return NVML_ERROR_INVALID_ARGUMENT;
    if (g.xid_events_unsupported || (types & ~EVENT_XID)) return NVML_ERROR_NOT_SUPPORTED;
    pthread_mutex_lock(&lock);
    set->mask[(uintptr_t)d - 1] |= types;
    pthread_mutex_unlock(&lock);
    return NVML_SUCCESS;
}

/* Sleeps until the scenario's directory changes or `ms` pass. The real NVML sleeps in the
   driver until an event comes; so does this (one inotify watch, set up on first use, on Linux),
   so an idle vramguard stays idle under the fake too. Elsewhere, or without inotify, it polls
   every 100 ms. */
#ifdef __linux__
static int watch_fd = -1;
static pthread_once_t watch_once = PTHREAD_ONCE_INIT;

static void watch_scenario_dir(void) {
    const char *path = scenario_path();
    if (!path) return;
    int fd = inotify_init1(IN_CLOEXEC | IN_NONBLOCK);
    if (fd < 0) return;
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", path);
    if (inotify_add_watch(fd, dirname(dir), IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE | IN_MODIFY) < 0) {
        close(fd);
        return;
    }
    watch_fd = fd;
}
#endif

static void wait_for_scenario(long long ms) {
    if (ms <= 0) return;
#ifdef __linux__
    pthread_once(&watch_once, watch_scenario_dir);
    if (watch_fd >= 0) {
        struct pollfd p = {watch_fd, POLLIN, 0};
        if (poll(&p, 1, (int)ms) > 0) {
            char buf[4096];
            while (read(watch_fd, buf, sizeof buf) > 0) {}
            pthread_mutex_lock(&lock);
            scenario_changed = 1;
            pthread_mutex_unlock(&lock);
        }
        return;
    }
#endif
    sleep_ms(ms < 100 ? ms : 100);
}

/* Delivers the lowest-sequence scripted XID not yet delivered on a registered GPU, waiting up to
   timeoutms for one to appear in the scenario. */
nvmlReturn_t nvmlEventSetWait_v2(nvmlEventSet_t set, nvmlEventData_t *data, unsigned int timeoutms) {
    if (!set || !data) return NVML_ERROR_INVALID_ARGUMENT;
    pthread_mutex_lock(&lock);
    refresh();
    long long hang = cur.event_wait_hang_ms;
    pthread_mutex_unlock(&lock);
    if (hang > 0) {
        sleep_ms(hang);
        return NVML_ERROR_TIMEOUT;
    }
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (;;) {
        pthread_mutex_lock(&lock);
        refresh();
        if (init_count == 0) {
            pthread_mutex_unlock(&lock);
            return NVML_ERROR_UNINITIALIZED;
        }
        for (int i = 0; i < cur.ngpus; i++) {
            fake_gpu *g = &cur.gpus[i];
            if (!(set->mask[i] & EVENT_XID) || g->lost) continue;
            int best = -1;
            for (int k = 0; k < g->nxids; k++)
                if (g->xid_seq[k] > xid_delivered[i] && (best < 0 || g->xid_seq[k] < g->xid_seq[best])) best = k;
            if (best < 0) continue;
            xid_delivered[i] = g->xid_seq[best];
            memset(data, 0, sizeof *data);
            data->device = (nvmlDevice_t)(uintptr_t)(i + 1);
            data->eventType = EVENT_XID;
            data->eventData = g->xid_code[best];
            data->gpuInstanceId = data->computeInstanceId = 0xFFFFFFFF;
            pthread_mutex_unlock(&lock);
            return NVML_SUCCESS;
        }
        pthread_mutex_unlock(&lock);
        clock_gettime(CLOCK_MONOTONIC, &now);
        long long waited = (now.tv_sec - start.tv_sec) * 1000LL + (now.tv_nsec - start.tv_nsec) / 1000000LL;
        if (waited >= (long long)timeoutms) return NVML_ERROR_TIMEOUT;
        wait_for_scenario((long long)timeoutms - waited);
    }
}

/* Internal structures of the WireGuard data path (include/zlayer/wg.h has the map of files).
 *
 * Locking: d->lock (a writer-preferring rwlock) is held for reading by a worker around each batch and for writing by
 * every call from Python that changes peers, sessions or the allowed-IPs table, so a worker never sees a session
 * freed under it. Within a read-locked batch: the send counter is atomic, the replay window and a peer's endpoint
 * and staged queue have their own mutexes (the receive and send workers and Python's keep-alives meet there).
 */
#ifndef ZLAYER_WG_INT_H
#define ZLAYER_WG_INT_H

#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/socket.h>

#include <openssl/evp.h>

#include "zlayer/wg.h"

#define WG_HDR_DATA 16          /* type, reserved, receiver index, counter */
#define WG_TAG 16
#define WG_MIN_DATA (WG_HDR_DATA + WG_TAG)
#define WG_REPLAY_BITS 2048     /* RFC 6479: a ring of 32 words, one of them redundant */
#define WG_REPLAY_WORDS (WG_REPLAY_BITS / 64)
#define WG_REPLAY_WINDOW (WG_REPLAY_BITS - 64)
#define WG_REJECT_AFTER_MESSAGES (UINT64_MAX - (1ULL << 13))
#define WG_INDEX_SLOTS 8192     /* open-addressing table of sessions by local index (3 per peer at most) */
#define WG_STAGED_MAX 128
#define WG_BATCH 64             /* datagrams per recvmmsg / messages per sendmmsg */
#define WG_MAX_SEGS 64          /* datagrams in one UDP_SEGMENT send */
#define WG_BUF 65536
#define WG_VNET_LEN 10          /* struct virtio_net_hdr */
#define WG_HS_QUEUE 1024

typedef struct {
    uint64_t bitmap[WG_REPLAY_WORDS];
    uint64_t top; /* greatest counter accepted, plus one */
} wg_replay_t;

typedef struct wg_session {
    uint32_t local_index, remote_index;
    uint8_t send_key[WG_KEY_LEN], recv_key[WG_KEY_LEN];
    int initiator;
    int peer;
    int64_t created_ns;
    _Atomic uint64_t send_counter;
    pthread_mutex_t replay_lock;
    wg_replay_t replay;
} wg_session_t;

typedef struct {
    int present;
    pthread_mutex_t ep_lock;
    struct sockaddr_storage endpoint;
    socklen_t endpoint_len;
    wg_session_t *current, *previous, *next;
    wg_session_t *retired; /* the previous session a promotion pushed out; freed by Python's next write */
    _Atomic uint64_t rx_bytes, tx_bytes;
    _Atomic int64_t last_tx_ns, last_rx_ns, last_tx_data_ns, last_rx_data_ns;
    _Atomic int want_handshake;
    pthread_mutex_t staged_lock;
    uint8_t *staged[WG_STAGED_MAX]; /* plain IP packets, no virtio header */
    uint16_t staged_len[WG_STAGED_MAX];
    uint32_t staged_head, staged_count;
} wg_peer_t;

/* What one worker thread owns: its cipher context, its receive buffers and its outgoing batch. */
typedef struct {
    EVP_CIPHER_CTX *ctx;
    /* outgoing UDP messages (send worker) */
    struct mmsghdr msgs[WG_BATCH];
    struct iovec iov[WG_BATCH];
    struct sockaddr_storage addrs[WG_BATCH];
    union {
        char buf[CMSG_SPACE(sizeof(uint16_t))];
        struct cmsghdr align;
    } ctrl[WG_BATCH];
    uint16_t seg[WG_BATCH]; /* datagram size of each message (several in one = UDP_SEGMENT) */
    uint8_t *out;        /* WG_BATCH * WG_BUF */
    size_t nmsg;
    int open_peer;       /* the message being filled can take more segments of open_seg bytes for this peer */
    size_t open_seg;
    uint16_t open_count;
    /* TUN writes (receive worker): one coalesced TCP super-packet pending */
    uint8_t *tunbuf;     /* WG_VNET_LEN + WG_BUF */
    size_t tun_len;      /* bytes in tunbuf past the virtio header; 0 = nothing pending */
    size_t tun_seg;      /* payload bytes per coalesced segment */
    uint16_t tun_segs;
    uint32_t tun_next_seq;
    /* scratch for one plaintext packet / segment */
    uint8_t *scratch;    /* WG_BUF + 64 */
    int64_t now;         /* CLOCK_MONOTONIC at the start of the worker's current batch */
} wg_worker_t;

typedef struct {
    _Atomic uint64_t rx_datagrams, rx_data_packets, rx_keepalives, tx_datagrams, tx_data_packets, tx_keepalives;
    _Atomic uint64_t handshake_queued, drop_malformed, drop_unknown_index, drop_auth, drop_replay, drop_allowed_ips;
    _Atomic uint64_t drop_no_peer, drop_handshake_queue, drop_staged, drop_send_errors;
    _Atomic uint64_t gso_sends, gro_receives, tso_reads, coalesced_writes;
} wg_counters_t;

struct wg_dev {
    wg_config_t cfg;
    int tun_fd, udp_fd, owns_tun, owns_udp;
    int netns_fd;        /* the network namespace the device was made in (a rebound socket goes there too) */
    int family;          /* of udp_fd */
    int vnet_hdr, udp_gso, udp_gro;
    int ifindex;
    uint32_t fwmark;     /* SO_MARK of the UDP socket (UAPI fwmark=), kept across a rebind */
    int stop_fd;         /* eventfd: tells the workers to return */
    pthread_t rx_thread, tx_thread;
    int running;
    pthread_rwlock_t lock;
    wg_peer_t *peers;    /* WG_MAX_PEERS */
    wg_session_t *index[WG_INDEX_SLOTS];
    wg_allowed_ip_t *allowed;
    size_t n_allowed;
    int64_t reject_after_ns;
    wg_worker_t rxw, txw;
    wg_counters_t c;
    /* handshake messages for Python */
    pthread_mutex_t hs_lock;
    pthread_cond_t hs_cond;
    wg_hs_msg_t *hs;     /* WG_HS_QUEUE ring */
    uint32_t hs_head, hs_count;
    int hs_wake;
};

/* wg_core.c */
int64_t wg_now(void);
wg_session_t *wg_lookup_index(wg_dev_t *d, uint32_t idx);
int wg_route(wg_dev_t *d, const uint8_t *pkt, size_t len, int by_source);
void wg_queue_handshake(wg_dev_t *d, const uint8_t *buf, size_t len, const void *from, uint32_t fromlen);
void wg_promote_next(wg_dev_t *d, wg_peer_t *p, wg_session_t *s);
int wg_session_usable(const wg_dev_t *d, const wg_session_t *s, int64_t now);
int wg_worker_init(wg_worker_t *w);
void wg_worker_free(wg_worker_t *w);

/* wg_rx.c */
void wg_rx_one(wg_dev_t *d, uint8_t *buf, size_t len, const void *from, uint32_t fromlen);
int wg_replay_check(wg_replay_t *r, uint64_t counter);
size_t wg_inner_len(const uint8_t *pkt, size_t len);

/* A plain packet to send, in two pieces so that a TSO segment is encrypted from its rebuilt headers and its payload
 * where it lies in the TUN read, without a copy: head holds at least the IP header; body may be empty. */
typedef struct {
    const uint8_t *head;
    size_t head_len;
    const uint8_t *body;
    size_t body_len;
} wg_pkt_t;

/* wg_tx.c */
int wg_encrypt_to_peer(wg_dev_t *d, wg_worker_t *w, int peer, const wg_pkt_t *pkt);
void wg_send_plain(wg_dev_t *d, wg_worker_t *w, const wg_pkt_t *pkt);
void wg_tx_flush(wg_dev_t *d, wg_worker_t *w);
int wg_seal(EVP_CIPHER_CTX *ctx, const uint8_t key[WG_KEY_LEN], uint64_t counter, const uint8_t *in, size_t len,
            uint8_t *out);
int wg_open(EVP_CIPHER_CTX *ctx, const uint8_t key[WG_KEY_LEN], uint64_t counter, uint8_t *buf, size_t len);

/* wg_io.c */
void wg_probe_offloads(wg_dev_t *d);

/* wg_offload.c */
typedef void (*wg_segment_fn)(wg_dev_t *d, wg_worker_t *w, const wg_pkt_t *pkt);
void wg_tso_split(wg_dev_t *d, wg_worker_t *w, uint8_t *buf, size_t len, wg_segment_fn each);
void wg_tun_put(wg_dev_t *d, wg_worker_t *w, const uint8_t *pkt, size_t len);
void wg_tun_flush(wg_dev_t *d, wg_worker_t *w);
uint16_t wg_csum_fold(uint32_t sum);
uint32_t wg_csum_add(uint32_t sum, const uint8_t *p, size_t len);

#endif

/* zlayer WireGuard: the C data path behind zlayer.overlay._wg.
 *
 * One device = one TUN interface and one UDP socket, served by two worker threads (GIL released): the receive worker
 * (recvmmsg with UDP GRO -> decrypt -> replay window -> allowed-IPs check -> TUN write, TCP segments coalesced back
 * into one offloaded write) and the send worker (TUN read with IFF_VNET_HDR/TSO -> segment -> encrypt -> sendmmsg
 * with UDP GSO). Python (zlayer/overlay/) owns the handshake, the timers and the UAPI socket: it hands the device its
 * peer table (endpoints, allowed IPs) and session keys, and takes the handshake messages the device queues for it.
 * Python never sees a data packet.
 *
 * Files: csrc/wg/wg_core.c (device, peers, keypairs, handshake queue, stats), wg_rx.c (a datagram in: parse,
 * decrypt, replay window, roaming), wg_tx.c (a packet out: route, encrypt, stage while there is no session),
 * wg_offload.c (virtio-net header, TSO segmentation, checksums, TCP coalescing), wg_io.c (TUN and UDP setup, the
 * worker threads, batches), wg_int.h (the internal structures). Fuzz target: csrc/wg/fuzz/fuzz_packet.c.
 */
#ifndef ZLAYER_WG_H
#define ZLAYER_WG_H

#include <stddef.h>
#include <stdint.h>

typedef struct wg_dev wg_dev_t;

enum {
    WG_KEY_LEN = 32,
    WG_MAX_PEERS = 1024,
    WG_HS_MAX = 148,          /* the longest handshake message (an initiation) */
    WG_MSG_INITIATION = 1,
    WG_MSG_RESPONSE = 2,
    WG_MSG_COOKIE = 3,
    WG_MSG_DATA = 4,
};

typedef struct {
    char ifname[16];          /* TUN interface to create (or attach to) */
    int listen_port;          /* UDP port; 0 = any free port (read it back with wg_listen_port) */
    int mtu;                  /* interface MTU (1420 when 0) */
    int offload;              /* 1: use IFF_VNET_HDR + TUNSETOFFLOAD, UDP_SEGMENT and UDP_GRO where the kernel has them */
    double reject_after_time; /* seconds a session key may be used (180 s in the protocol) */
    uint64_t rekey_after_messages; /* send counter past which the device asks for a new handshake (2^60) */
} wg_config_t;

/* An allowed-IPs entry: family 4 or 6, the address in network order (4 or 16 bytes), the prefix length. */
typedef struct {
    int family;
    uint8_t addr[16];
    int cidr;
    int peer;
} wg_allowed_ip_t;

/* A handshake message (initiation, response or cookie reply) the receive worker queued for Python, with the
 * address it came from (a struct sockaddr_in or sockaddr_in6). */
typedef struct {
    uint8_t data[WG_HS_MAX];
    uint32_t len;
    uint8_t from[28];
    uint32_t from_len;
    int64_t received_ns;      /* CLOCK_MONOTONIC */
} wg_hs_msg_t;

typedef struct {
    int present;
    uint8_t endpoint[28];     /* sockaddr_in/in6; endpoint_len 0 = none known */
    uint32_t endpoint_len;
    uint64_t rx_bytes, tx_bytes;               /* of encrypted datagrams, as wg show counts them */
    int64_t last_tx_ns, last_rx_ns;            /* any authenticated datagram sent / received (CLOCK_MONOTONIC, 0 never) */
    int64_t last_tx_data_ns, last_rx_data_ns;  /* ... carrying data (not a keepalive) */
    int want_handshake;       /* the send worker had a packet and no usable session (cleared by reading) */
    int has_current;          /* a session key the device can send with */
    int current_initiator;    /* ... made by a handshake this side initiated */
    int64_t current_created_ns;
    uint64_t current_send_counter;
    uint32_t staged;          /* packets waiting for a session */
} wg_peer_info_t;

typedef struct {
    uint64_t rx_datagrams, rx_data_packets, rx_keepalives, tx_datagrams, tx_data_packets, tx_keepalives;
    uint64_t handshake_queued;
    uint64_t drop_malformed;   /* wrong length or type, bad reserved bytes, not an IP packet inside */
    uint64_t drop_unknown_index; /* no session with that receiver index (or it expired) */
    uint64_t drop_auth;        /* the AEAD tag did not verify: wrong key or altered bytes */
    uint64_t drop_replay;      /* a counter the replay window has seen or that is too old */
    uint64_t drop_allowed_ips; /* inner source address not in the sending peer's allowed IPs */
    uint64_t drop_no_peer;     /* TUN packet to an address no peer has in its allowed IPs */
    uint64_t drop_handshake_queue; /* handshake messages dropped because Python's queue was full */
    uint64_t drop_staged;      /* packets dropped waiting for a handshake that did not come */
    uint64_t drop_send_errors; /* sendmmsg/TUN write failures */
    uint64_t gso_sends, gro_receives, tso_reads, coalesced_writes;
    uint32_t handshake_backlog; /* messages queued for Python now */
    int vnet_hdr, udp_gso, udp_gro;
} wg_stats_t;

/* Every function returning int gives 0 on success and -1 with a message in err (or errno) on failure. */
int wg_create(const wg_config_t *cfg, wg_dev_t **out, char *err, size_t errlen);
/* A device over descriptors the caller opened (tests and the fuzz target): tun_fd is read/written as a TUN, with
 * virtio-net headers when vnet_hdr; udp_fd is an AF_INET or AF_INET6 datagram socket. The device closes neither. */
int wg_create_on(const wg_config_t *cfg, int tun_fd, int vnet_hdr, int udp_fd, wg_dev_t **out, char *err,
                 size_t errlen);
int wg_start(wg_dev_t *d, char *err, size_t errlen);
void wg_stop(wg_dev_t *d);
void wg_destroy(wg_dev_t *d);
int wg_listen_port(const wg_dev_t *d);
/* Rebinds the UDP socket to another port (UAPI listen_port=), pausing the workers. */
int wg_set_listen_port(wg_dev_t *d, int port, char *err, size_t errlen);
int wg_ifindex(const wg_dev_t *d);
/* SO_MARK on the UDP socket (UAPI fwmark=; 0 clears it); -1 with errno when the kernel refuses. */
int wg_set_fwmark(wg_dev_t *d, uint32_t mark);

int wg_peer_add(wg_dev_t *d, int peer);
void wg_peer_remove(wg_dev_t *d, int peer);
int wg_peer_set_endpoint(wg_dev_t *d, int peer, const void *sa, uint32_t salen);
/* Swaps the whole allowed-IPs table (longest prefix wins). */
int wg_set_allowed_ips(wg_dev_t *d, const wg_allowed_ip_t *entries, size_t n, char *err, size_t errlen);
/* Installs a session made by a handshake. An initiator's becomes the current one at once and the packets staged for
 * the peer are sent with it (returns how many); a responder's waits as "next" until the first data from the peer
 * arrives under it. created_ns is CLOCK_MONOTONIC. */
int wg_peer_install_session(wg_dev_t *d, int peer, uint32_t local_index, uint32_t remote_index,
                            const uint8_t send_key[WG_KEY_LEN], const uint8_t recv_key[WG_KEY_LEN], int initiator,
                            int64_t created_ns);
/* Forgets every session key of the peer (and drops staged packets). */
void wg_peer_clear_sessions(wg_dev_t *d, int peer);
/* Sends an empty data packet under the current session; -1 when there is none. */
int wg_peer_send_keepalive(wg_dev_t *d, int peer);
int wg_peer_info(wg_dev_t *d, int peer, wg_peer_info_t *out);
/* Sends a handshake message from the device's socket. */
int wg_send_to(wg_dev_t *d, const void *sa, uint32_t salen, const uint8_t *msg, size_t len);
/* Waits up to timeout seconds for handshake messages or a peer wanting a handshake, then takes up to cap queued
 * messages into out; returns how many (0 on timeout or when only a handshake is wanted). */
size_t wg_wait(wg_dev_t *d, double timeout, wg_hs_msg_t *out, size_t cap);
/* Wakes a wg_wait in another thread. */
void wg_wake(wg_dev_t *d);
void wg_get_stats(wg_dev_t *d, wg_stats_t *out);

/* One datagram as the receive worker handles it (exposed for the fuzz target). */
void wg_rx_datagram(wg_dev_t *d, uint8_t *buf, size_t len, const void *from, uint32_t fromlen);
/* One read from the TUN (with its virtio-net header when the device has them) as the send worker handles it. */
void wg_tx_tun_read(wg_dev_t *d, uint8_t *buf, size_t len);
/* Sends what the workers batched (used after wg_rx_datagram / wg_tx_tun_read by the fuzz target). */
void wg_flush(wg_dev_t *d);

#endif

# C declarations of the WireGuard data path (include/zlayer/wg.h).
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t


cdef extern from "zlayer/wg.h" nogil:
    ctypedef struct wg_dev_t:
        pass

    enum:
        WG_KEY_LEN
        WG_MAX_PEERS
        WG_HS_MAX

    ctypedef struct wg_config_t:
        char ifname[16]
        int listen_port
        int mtu
        int offload
        double reject_after_time
        uint64_t rekey_after_messages

    ctypedef struct wg_allowed_ip_t:
        int family
        uint8_t addr[16]
        int cidr
        int peer

    ctypedef struct wg_hs_msg_t:
        uint8_t data[148]
        uint32_t len
        uint8_t from_ "from"[28]
        uint32_t from_len
        int64_t received_ns

    ctypedef struct wg_peer_info_t:
        int present
        uint8_t endpoint[28]
        uint32_t endpoint_len
        uint64_t rx_bytes, tx_bytes
        int64_t last_tx_ns, last_rx_ns, last_tx_data_ns, last_rx_data_ns
        int want_handshake
        int has_current
        int current_initiator
        int64_t current_created_ns
        uint64_t current_send_counter
        uint32_t staged

    ctypedef struct wg_stats_t:
        uint64_t rx_datagrams, rx_data_packets, rx_keepalives, tx_datagrams, tx_data_packets, tx_keepalives
        uint64_t handshake_queued, drop_malformed, drop_unknown_index, drop_auth, drop_replay, drop_allowed_ips
        uint64_t drop_no_peer, drop_handshake_queue, drop_staged, drop_send_errors
        uint64_t gso_sends, gro_receives, tso_reads, coalesced_writes
        uint32_t handshake_backlog
        int vnet_hdr, udp_gso, udp_gro

    int wg_create(const wg_config_t *cfg, wg_dev_t **out, char *err, size_t errlen)
    int wg_start(wg_dev_t *d, char *err, size_t errlen)
    void wg_stop(wg_dev_t *d)
    void wg_destroy(wg_dev_t *d)
    int wg_listen_port(const wg_dev_t *d)
    int wg_set_listen_port(wg_dev_t *d, int port, char *err, size_t errlen)
    int wg_ifindex(const wg_dev_t *d)
    int wg_set_fwmark(wg_dev_t *d, uint32_t mark)
    int wg_peer_add(wg_dev_t *d, int peer)
    void wg_peer_remove(wg_dev_t *d, int peer)
    int wg_peer_set_endpoint(wg_dev_t *d, int peer, const void *sa, uint32_t salen)
    int wg_set_allowed_ips(wg_dev_t *d, const wg_allowed_ip_t *entries, size_t n, char *err, size_t errlen)
    int wg_peer_install_session(wg_dev_t *d, int peer, uint32_t local_index, uint32_t remote_index,
                                const uint8_t *send_key, const uint8_t *recv_key, int initiator, int64_t created_ns)
    void wg_peer_clear_sessions(wg_dev_t *d, int peer)
    int wg_peer_send_keepalive(wg_dev_t *d, int peer)
    int wg_peer_info(wg_dev_t *d, int peer, wg_peer_info_t *out)
    int wg_send_to(wg_dev_t *d, const void *sa, uint32_t salen, const uint8_t *msg, size_t len)
    size_t wg_wait(wg_dev_t *d, double timeout, wg_hs_msg_t *out, size_t cap)
    void wg_wake(wg_dev_t *d)
    void wg_get_stats(wg_dev_t *d, wg_stats_t *out)

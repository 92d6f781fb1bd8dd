// The rtnetlink numbers vxmesh uses, each defined once (linux/netlink.h, linux/rtnetlink.h,
// linux/if_link.h, linux/if_addr.h, linux/neighbour.h, linux/if.h).

/** Address families (rtgen_family, ifa_family, rtm_family, ndm_family). */
export const AF_UNSPEC = 0;
export const AF_INET = 2;
export const AF_BRIDGE = 7;

/** The rtnetlink protocol number of socket(AF_NETLINK, …, NETLINK_ROUTE). */
export const NETLINK_ROUTE = 0;

/** nlmsghdr types. */
export const NLMSG_ERROR = 2;
export const RTM = {
  NEWLINK: 16, DELLINK: 17, GETLINK: 18, SETLINK: 19,
  NEWADDR: 20, DELADDR: 21, GETADDR: 22,
  NEWROUTE: 24, DELROUTE: 25, GETROUTE: 26,
  NEWNEIGH: 28, DELNEIGH: 29, GETNEIGH: 30,
} as const;

/** nlmsghdr flags beyond NLM_F_REQUEST|NLM_F_ACK (which every request carries). */
export const NLM_F = { ROOT: 0x100, MATCH: 0x200, DUMP: 0x300, REPLACE: 0x100, EXCL: 0x200, CREATE: 0x400 } as const;

/** Multicast groups (RTNLGRP_*), for notifications. */
export const RTNLGRP = { LINK: 1, NEIGH: 3, IPV4_IFADDR: 5, IPV4_ROUTE: 7 } as const;

/** Set on a nested attribute's type. */
export const NLA_F_NESTED = 0x8000;

/** Links: ifi_flags bits, IFLA_* attributes, IFLA_INFO_*, VETH_INFO_PEER, IFLA_BRPORT_MODE. */
export const IFF_UP = 1;
export const IFLA = { ADDRESS: 1, IFNAME: 3, MTU: 4, MASTER: 10, PROTINFO: 12, LINKINFO: 18, IFALIAS: 20, GROUP: 27, NET_NS_FD: 28 } as const;
export const IFLA_INFO = { KIND: 1, DATA: 2 } as const;
export const VETH_INFO_PEER = 1;
/** Hairpin mode of a bridge port, inside IFLA_PROTINFO of an AF_BRIDGE message. */
export const IFLA_BRPORT_MODE = 4;

/** Addresses: IFA_* attributes. */
export const IFA = { ADDRESS: 1, LOCAL: 2, BROADCAST: 4 } as const;

/** Routes: RTA_* attributes, RTAX_MTU inside RTA_METRICS, rtm_flags bits. */
export const RTA = { DST: 1, OIF: 4, GATEWAY: 5, PRIORITY: 6, METRICS: 8, TABLE: 15 } as const;
export const RTAX_MTU = 2;
export const RTNH_F_ONLINK = 4;
/** rtm_flags of RTM_GETROUTE: answer with the matching FIB entry (`ip route get fibmatch`). */
export const RTM_F_FIB_MATCH = 0x2000;

/** Route tables, protocols, scopes and types. */
export const RT_TABLE_MAIN = 254;
export const RTPROT_BOOT = 3;
/** vxmesh's own route protocol (rtm_protocol); `ip route show proto 118`. */
export const VXMESH_RTPROT = 118;
export const RT_SCOPE_UNIVERSE = 0;
export const RT_SCOPE_NOWHERE = 255;
export const RTN_UNICAST = 1;

/** Neighbours: NDA_* attributes and the NUD_PERMANENT state bit. */
export const NDA = { DST: 1, LLADDR: 2 } as const;
export const NUD_PERMANENT = 0x80;

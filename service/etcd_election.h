// EtcdElection: one leader among the irqbypassd replicas that share an etcd
// prefix (--store=etcd). Each replica holds an etcd lease (TTL
// --leader_lease_ttl, renewed every TTL/3 over a LeaseKeepAlive stream) and
// campaigns by creating the leader key "<prefix>leader" with its address as
// the value, attached to its lease, in a Txn that succeeds only while the
// key does not exist. The winner's epoch is the key's create_revision: it
// rises with every election, fences the winner's writes (EtcdStore::
// SetFence) and is carried by its commands to agents.
//
// The key disappears when the leader's lease expires (the process died, hung
// or lost etcd for longer than the TTL) or is revoked (Resign, on a clean
// shutdown); a standby polls the key and takes over then. A leader counts
// itself deposed (`on_lost` runs once) when a keepalive answer says its
// lease is gone, or when by its own clock the lease is within TTL/4 of
// expiring unrenewed: etcd may have let it go without telling us (this
// replica cut off from etcd's quorum, or stopped). A fenced write that fails
// (etcd_store.h) deposes it too.
//
// Thread-safe.
#ifndef IRQBYPASS_SERVICE_ETCD_ELECTION_H_
#define IRQBYPASS_SERVICE_ETCD_ELECTION_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/mutex.h"
#include "grpcpp/client_context.h"
#include "grpcpp/security/credentials.h"
#include "protos/etcd/rpc.grpc.pb.h"

namespace irqbypass {

struct EtcdElectionOptions {
  std::vector<std::string> endpoints;                     // as EtcdStoreOptions
  std::shared_ptr<grpc::ChannelCredentials> credentials;  // likewise
  std::string key = "/irqbypass/leader";
  // The leader key's value: where clients and agents reach this replica.
  std::string address;
  // Whole seconds, at least 2 (etcd grants no shorter lease by default).
  absl::Duration ttl = absl::Seconds(5);
  // How often a standby looks at the leader key.
  absl::Duration poll = absl::Milliseconds(200);
  absl::Duration timeout = absl::Seconds(5);  // each unary etcd call
  // Runs once, on an internal thread, when this replica led and its lease
  // turned out to be gone. May be empty.
  std::function<void()> on_lost;
};

class EtcdElection {
 public:
  // INVALID_ARGUMENT for bad endpoints, an empty address or a TTL under 2 s.
  // Does not contact etcd.
  static absl::StatusOr<std::unique_ptr<EtcdElection>> Create(
      EtcdElectionOptions options);
  ~EtcdElection();  // Stop()

  EtcdElection(const EtcdElection&) = delete;
  EtcdElection& operator=(const EtcdElection&) = delete;

  // Blocks until this replica leads, then returns its epoch; CANCELLED
  // after Stop(). Meanwhile `on_leader(address)` is called whenever the
  // leader seen changes ("" when there is none). etcd failures are retried.
  absl::StatusOr<uint64_t> Campaign(
      const std::function<void(const std::string& leader)>& on_leader);

  // Revokes the lease: the leader key goes at once, so a standby takes over
  // without waiting out the TTL. For a clean shutdown; best effort.
  void Resign();

  // Ends Campaign and the keepalive. Idempotent.
  void Stop();

  // The lease held now (0: none). For tests.
  int64_t lease_id() const;

 private:
  explicit EtcdElection(EtcdElectionOptions options);
  // Grants a lease and starts its keepalive thread.
  absl::Status Grant();
  // Renews `lease` (which expires at `expires` unless renewed) until it is
  // lost or Stop().
  void KeepAliveLoop(int64_t lease, absl::Time expires);
  // Sleeps up to `d`; false once stopped.
  bool SleepUnlessStopped(absl::Duration d);
  void SetDeadline(grpc::ClientContext* context) const;

  const EtcdElectionOptions options_;
  std::unique_ptr<etcdserverpb::KV::Stub> kv_;
  std::unique_ptr<etcdserverpb::Lease::Stub> lease_stub_;

  mutable Mutex mu_;
  bool stopped_ ABSL_GUARDED_BY(mu_) = false;
  bool leading_ ABSL_GUARDED_BY(mu_) = false;
  int64_t lease_ ABSL_GUARDED_BY(mu_) = 0;
  bool lease_lost_ ABSL_GUARDED_BY(mu_) = false;
  // The keepalive stream's context, so that Stop can cancel it.
  grpc::ClientContext* keepalive_context_ ABSL_GUARDED_BY(mu_) = nullptr;
  Mutex thread_mu_;  // taken before mu_
  std::thread keepalive_ ABSL_GUARDED_BY(thread_mu_);
};

}  // namespace irqbypass

#endif  // IRQBYPASS_SERVICE_ETCD_ELECTION_H_

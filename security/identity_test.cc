#include "security/identity.h"

#include "gtest/gtest.h"

namespace irqbypass::security {
namespace {

TEST(IdentityTest, ParsesEachRole) {
  for (Role role : {Role::kServer, Role::kAgent, Role::kOrchestrator,
                    Role::kReader, Role::kAdmin}) {
    const std::string uri = IdentityUri("example.org", role, "node-1.a_b");
    auto id = ParseIdentity(uri, "example.org");
    ASSERT_TRUE(id.ok()) << id.status();
    EXPECT_EQ(id->role, role);
    EXPECT_EQ(id->name, "node-1.a_b");
    EXPECT_EQ(id->uri, uri);
  }
  EXPECT_EQ(IdentityUri("td", Role::kAgent, "n1"),
            "spiffe://td/irqbypass/agent/n1");
}

TEST(IdentityTest, RefusesWhatIsNotOurs_SayingWhy) {
  const struct {
    const char* uri;
    const char* why;
  } cases[] = {
      {"https://example.org/irqbypass/agent/n1", "not a spiffe:// URI"},
      {"spiffe://other.org/irqbypass/agent/n1", "trust domain \"other.org\""},
      {"spiffe://example.org/other/agent/n1", "not an irqbypass identity"},
      {"spiffe://example.org/irqbypass/root/n1", "unknown role \"root\""},
      {"spiffe://example.org/irqbypass/agent/", "the name must be"},
      {"spiffe://example.org/irqbypass/agent/n 1", "the name must be"},
      {"spiffe://example.org/irqbypass/agent/n1/x", "not DOMAIN/irqbypass"},
      {"spiffe://example.org/irqbypass/agent", "not DOMAIN/irqbypass"},
  };
  for (const auto& c : cases) {
    auto id = ParseIdentity(c.uri, "example.org");
    EXPECT_EQ(id.status().code(), absl::StatusCode::kUnauthenticated) << c.uri;
    EXPECT_NE(id.status().message().find(c.why), std::string::npos)
        << c.uri << ": " << id.status();
  }
}

TEST(IdentityTest, TrustDomainsAndNames) {
  EXPECT_TRUE(ValidTrustDomain("irqbypass.local"));
  EXPECT_FALSE(ValidTrustDomain(""));
  EXPECT_FALSE(ValidTrustDomain("Upper.org"));
  EXPECT_FALSE(ValidTrustDomain("a/b"));
  EXPECT_TRUE(ValidIdentityName(std::string(253, 'a')));
  EXPECT_FALSE(ValidIdentityName(std::string(254, 'a')));
  EXPECT_FALSE(ValidIdentityName("a:b"));
  EXPECT_FALSE(ValidIdentityName("."));
  EXPECT_FALSE(ValidIdentityName(".."));
  EXPECT_TRUE(ValidIdentityName("..a"));
}

}  // namespace
}  // namespace irqbypass::security

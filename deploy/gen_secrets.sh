#!/bin/sh
# Make the secrets the compose stack needs (deploy/docker-compose.yml reads
# them from deploy/secrets/ as compose "secrets"). Nothing here is committed:
# deploy/secrets/ is git-ignored. Needs only openssl.
#
#   sh deploy/gen_secrets.sh            # into deploy/secrets (must not exist yet)
#   sh deploy/gen_secrets.sh DIR        # into DIR
#
# Made:
#   ca.pem, ca.key                 a private CA (keep ca.key offline afterwards)
#   kafka-N.keystore.pem           broker N's key (encrypted, PKCS#8) + certificate
#                                  (SAN kafka-N, localhost), for Kafka's PEM key store
#   kafka-ssl.properties           key.password=... for those keys (read by Kafka's
#                                  FileConfigProvider, so no password is in the environment)
#   kafka_server_jaas.conf         SASL PLAIN users: broker (inter-broker), admin
#                                  (topic/ACL init job, health checks): the super users;
#                                  lapstream (workers), gateway (lapstream serve),
#                                  ingest (lapstream ingest p3), venue (the race office /
#                                  results system: race, start, photo, decision, record_ref
#                                  lines): ACLs from kafka-init
#   kafka-client.properties        admin's client settings for Kafka's (Java) CLI tools in the
#                                  containers (kafka-init, health checks); not for lapstream
#   lapstream-kafka-password       the workers' SASL password
#   gateway-kafka-password         the gateway's SASL password
#   ingest-kafka-password          P3 ingest's SASL password
#   grafana-admin-password         Grafana's admin password
#   venue-kafka-password           the venue user's SASL password (host only, 0600)
#   venue-kafka.conf               lapstream's Kafka settings for that user from this host
#                                  (lapstream replay FEED --kafka-config ...; 0600): SASL_SSL,
#                                  PLAIN, user venue, the password file and ca.pem above by
#                                  absolute path (move the directory: edit the two paths)
# Passwords are 32 random hex characters, a different one per user, never
# printed. Directory 0700. The files compose mounts into containers stay 0644:
# compose bind-mounts a file secret with its host mode and owner (uid, gid and
# mode of a service's secret are Swarm-only), and the containers' own users
# (kafka, lapstream 10001, grafana 472) are not the host user who ran this, so
# 0600 would lock them out; the 0700 directory keeps other host users out.
# What only the host uses is 0600: ca.key and the venue files.
set -eu
umask 077
DIR=${1:-$(dirname "$0")/secrets}
if [ -e "$DIR" ] && [ -n "$(ls -A "$DIR" 2>/dev/null)" ]; then
  echo "gen_secrets: $DIR exists and is not empty; remove it to make new secrets" >&2
  exit 1
fi
command -v openssl >/dev/null || { echo "gen_secrets: openssl is needed" >&2; exit 1; }
mkdir -p "$DIR"
chmod 700 "$DIR"
cd "$DIR"
pw() { openssl rand -hex 16; }

openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -sha256 -days 825 \
  -subj "/CN=lapstream compose CA" -keyout ca.key -out ca.pem \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null

KEY_PASSWORD=$(pw)
printf 'key.password=%s\n' "$KEY_PASSWORD" > kafka-ssl.properties
printf '%s' "$KEY_PASSWORD" > .key-password
for n in 1 2 3; do
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -sha256 \
    -subj "/CN=kafka-$n" -keyout "kafka-$n.key" -out "kafka-$n.csr" 2>/dev/null
  printf 'subjectAltName=DNS:kafka-%s,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\nbasicConstraints=CA:FALSE\n' "$n" > "kafka-$n.ext"
  openssl x509 -req -in "kafka-$n.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -sha256 -days 825 \
    -extfile "kafka-$n.ext" -out "kafka-$n.pem" 2>/dev/null
  openssl pkcs8 -topk8 -v2 aes-256-cbc -v2prf hmacWithSHA256 -in "kafka-$n.key" \
    -passout file:.key-password -out "kafka-$n.key.enc"
  cat "kafka-$n.key.enc" "kafka-$n.pem" ca.pem > "kafka-$n.keystore.pem"
  rm -f "kafka-$n.key" "kafka-$n.key.enc" "kafka-$n.csr" "kafka-$n.ext" "kafka-$n.pem"
done
rm -f .key-password ca.srl

BROKER=$(pw); ADMIN=$(pw); LAPSTREAM=$(pw); GATEWAY=$(pw); INGEST=$(pw); VENUE=$(pw)
cat > kafka_server_jaas.conf <<EOF
KafkaServer {
    org.apache.kafka.common.security.plain.PlainLoginModule required
    username="broker"
    password="$BROKER"
    user_broker="$BROKER"
    user_admin="$ADMIN"
    user_lapstream="$LAPSTREAM"
    user_gateway="$GATEWAY"
    user_ingest="$INGEST"
    user_venue="$VENUE";
};
EOF
cat > kafka-client.properties <<EOF
security.protocol=SASL_SSL
sasl.mechanism=PLAIN
sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required username="admin" password="$ADMIN";
ssl.truststore.type=PEM
ssl.truststore.location=/run/secrets/kafka-ca
EOF
printf '%s\n' "$LAPSTREAM" > lapstream-kafka-password
printf '%s\n' "$GATEWAY" > gateway-kafka-password
printf '%s\n' "$INGEST" > ingest-kafka-password
pw > grafana-admin-password
printf '%s\n' "$VENUE" > venue-kafka-password
HERE=$(pwd -P)
cat > venue-kafka.conf <<EOF
# lapstream's Kafka settings (streams/kafka_security.py) for the venue feed from
# this host (race office / results system): user venue, which may write
# timing.raw and timing.records.ref only. Brokers: localhost:19092,29092,39092.
#   lapstream replay FEED --broker kafka://localhost:19092,localhost:29092,localhost:39092 --kafka-config $HERE/venue-kafka.conf
security_protocol = SASL_SSL
sasl_mechanism = PLAIN
sasl_username = venue
sasl_password_file = $HERE/venue-kafka-password
ssl_cafile = $HERE/ca.pem
EOF
chmod 644 ca.pem kafka-*.keystore.pem kafka-ssl.properties kafka_server_jaas.conf kafka-client.properties \
  lapstream-kafka-password gateway-kafka-password ingest-kafka-password grafana-admin-password
chmod 600 ca.key venue-kafka-password venue-kafka.conf
echo "gen_secrets: secrets in $DIR (Grafana admin password: $DIR/grafana-admin-password)" >&2

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
#                                  ingest (lapstream ingest p3): ACLs from kafka-init
#   kafka-client.properties        admin's client settings for Kafka's CLI tools
#   lapstream-kafka-password       the workers' SASL password
#   gateway-kafka-password         the gateway's SASL password
#   ingest-kafka-password          P3 ingest's SASL password
#   grafana-admin-password         Grafana's admin password
# Passwords are 32 random hex characters, a different one per user, never
# printed. Directory 0700; files 0644 so that
# the containers' own users (kafka, lapstream, grafana) can read their bind
# mounts; the directory keeps other host users out.
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

BROKER=$(pw); ADMIN=$(pw); LAPSTREAM=$(pw); GATEWAY=$(pw); INGEST=$(pw)
cat > kafka_server_jaas.conf <<EOF
KafkaServer {
    org.apache.kafka.common.security.plain.PlainLoginModule required
    username="broker"
    password="$BROKER"
    user_broker="$BROKER"
    user_admin="$ADMIN"
    user_lapstream="$LAPSTREAM"
    user_gateway="$GATEWAY"
    user_ingest="$INGEST";
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
chmod 644 ca.pem kafka-*.keystore.pem kafka-ssl.properties kafka_server_jaas.conf kafka-client.properties \
  lapstream-kafka-password gateway-kafka-password ingest-kafka-password grafana-admin-password
chmod 600 ca.key
echo "gen_secrets: secrets in $DIR (Grafana admin password: $DIR/grafana-admin-password)" >&2

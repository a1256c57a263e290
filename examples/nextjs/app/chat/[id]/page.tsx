import { ChatScreen } from "@/components/chat-screen";

/** `/chat/{id}`: the chat's page. Everything about the chat is loaded in the browser, as the
 * visitor (the service's cookie), so this server component only passes the id on. */
export default async function ChatPage({ params }: { params: Promise<{ id: string }> }) {
  const { id } = await params;
  return <ChatScreen key={id} id={id} />;
}
